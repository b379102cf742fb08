"""How sbatch reads the directives of a job script, so that `extra_lines` cannot set what
slurmrunner manages. Pure: text in, words and refusals out.

sbatch (src/sbatch/opt.c) reads every line that begins with `#SBATCH` (or the old `#SLURM`)
before the first command, splits it into words (whitespace separates them; quotes and
backslashes group; an unquoted `#` ends the line) and hands *all* the words of all the lines to
getopt_long. So one line may carry several options, a short option may be bundled with others
(`-vc64` is `-v -c 64`), a long option may be abbreviated to any unambiguous prefix
(`--cpus-per=4`) and its value may be the next word, even on the next line. sbatch also
translates `#PBS` and `#BSUB` lines into options.

The guard below errs on the side of refusing: every word is examined as if it were an option
(a word that is in fact another option's value can only cause a refusal, never a pass), a long
name is refused when it is a prefix of any checked option, and the value-taking short options
are the only place where scanning a bundle stops (there the rest of the word is the value).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

#: Line starts that sbatch reads as directives.
MAGIC_WORDS = ("#SBATCH", "#SLURM")
#: Line starts that sbatch translates into options (unless --ignore-pbs).
TRANSLATED_WORDS = ("#PBS", "#BSUB")
#: sbatch's short options that take a value (all required except -k's optional one), as in
#: slurm_opt.c from 22.05 to 25.11. Scanning a bundle stops at them: the rest is the value.
SHORT_WITH_VALUE = frozenset("ABCDFGJLMNSabcdeikmnopqtwx")

#: Options slurmrunner writes itself: extra_lines may never set them. long -> short ("" none).
MANAGED: dict[str, str] = {
    "--ntasks": "-n",
    "--cpus-per-task": "-c",
    "--mem": "",
    "--mem-per-cpu": "",
    "--output": "-o",
    "--error": "-e",
    "--chdir": "-D",
    "--job-name": "-J",
    "--array": "-a",
}
#: Options a config key sets: extra_lines may set them only while the key is unset.
#: key -> ((long, short), ...)
KEYED: dict[str, tuple[tuple[str, str], ...]] = {
    "partition": (("--partition", "-p"),),
    "time": (("--time", "-t"),),
    "account": (("--account", "-A"),),
    "gres": (("--gres", ""),),
    "gpus": (("--gpus", "-G"),),
    "constraint": (("--constraint", "-C"),),
    "exclude": (("--exclude", "-x"),),
    # --nodefile replaces the node list too.
    "nodelist": (("--nodelist", "-w"), ("--nodefile", "-F")),
    "qos": (("--qos", "-q"),),
}
_HETJOB = ("hetjob", "packjob")


def directive_kind(line: str) -> str | None:
    """'sbatch' for a directive line, 'translated' for #PBS/#BSUB, else None. Leading
    whitespace is ignored on purpose: sbatch would skip such a line, other readers may not."""
    text = line.lstrip()
    if text.startswith(MAGIC_WORDS):
        return "sbatch"
    if text.startswith(TRANSLATED_WORDS):
        return "translated"
    return None


def split_words(text: str) -> list[str]:
    """The words of a directive's body as sbatch's get_argument() cuts them."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and i + 1 < len(text):
                i += 1
                current.append(text[i])
            else:
                current.append(ch)
        elif ch == "\\":
            if i + 1 < len(text):
                i += 1
                current.append(text[i])
            in_word = True
        elif ch in "\"'":
            quote = ch
            in_word = True
        elif ch == "#":
            break  # an unquoted # starts a comment: sbatch ignores the rest of the line
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
        i += 1
    if quote:
        raise ValueError(f"unmatched {quote} (sbatch refuses the script)")
    if in_word:
        words.append("".join(current))
    return words


def directive_words(line: str) -> list[str]:
    """The words sbatch reads from one directive line (after its magic word)."""
    text = line.lstrip()
    for magic in MAGIC_WORDS:
        if text.startswith(magic):
            return split_words(text[len(magic) :])
    return []


_Checked = list[tuple[str, str, str | None]]


def _checked(set_keys: Iterable[str]) -> _Checked:
    """(long, short, key) of every option to refuse; key None for managed ones."""
    out = [(long, short, None) for long, short in MANAGED.items()]
    for key in set_keys:
        out += [(long, short, key) for long, short in KEYED.get(key, ())]
    return out


def _options_in(word: str, checked: _Checked) -> Iterator[tuple[str, str | None]]:
    """(long option, key) of each checked option that sbatch may read `word` as."""
    if word.startswith("--"):
        name = "--" + word[2:].split("=", 1)[0]
        if name == "--":
            return  # end of options: sbatch refuses any word after it
        # getopt_long takes any unambiguous prefix; an ambiguous one is refused by sbatch,
        # so refusing every prefix of a checked option loses nothing.
        for long, _short, key in checked:
            if long.startswith(name):
                yield long, key
    elif word.startswith("-") and len(word) > 1:
        for ch in word[1:]:
            for long, short, key in checked:
                if short == f"-{ch}":
                    yield long, key
            if ch in SHORT_WITH_VALUE:
                return  # the rest of the word is this option's value


def check_directive(line: str, set_keys: Iterable[str] = ()) -> None:
    """Refuse (ValueError) a line that sbatch would read as setting a managed option, or an
    option that one of `set_keys` (config keys that are set) already sets."""
    kind = directive_kind(line)
    if kind == "translated":
        raise ValueError(
            "sbatch translates #PBS and #BSUB lines into options: write #SBATCH lines instead"
        )
    if kind is None:
        return
    words = directive_words(line)
    checked = _checked(set_keys)
    for word in words:
        if word.lower() in _HETJOB:
            raise ValueError(
                f"{word!r} starts a heterogeneous job component, which slurmrunner does not support"
            )
        for long, key in _options_in(word, checked):
            shown = "" if word == long or word.startswith(f"{long}=") else f" (as {word!r})"
            if key is None:
                raise ValueError(f"sets {long}{shown}, which slurmrunner manages itself")
            raise ValueError(f"sets {long}{shown} but `{key}` is set too: keep one of them")


#: Options passed on sbatch's command line as well, where they win over #SBATCH lines and
#: SBATCH_* variables of the submitting environment (a service user's shell may set those).
PINNED = frozenset(
    {name[2:] for name in MANAGED} | {long[2:] for pairs in KEYED.values() for long, _ in pairs}
)
_OPTION_WORD = re.compile(r"^--([a-z-]+)=(.+)$", re.DOTALL)


def pinned_options(script: str) -> list[str]:
    """`--name=value` words of the script's directives (those sbatch reads: before the first
    command) whose name is managed or keyed, in script order, for sbatch's command line."""
    out: list[str] = []
    for line in script.splitlines()[1:]:
        if line.startswith(MAGIC_WORDS):
            try:
                words = directive_words(line)
            except ValueError:
                continue  # sbatch will refuse this script itself
            for word in words:
                m = _OPTION_WORD.match(word)
                if m and m.group(1) in PINNED:
                    out.append(word)
        elif line.strip() and not line.lstrip().startswith("#"):
            break  # sbatch reads no directive after the first command
    return out
