"""The admin's SLURM config (JSON) and a task's resource overrides: models, parsing, merging.

Pure: no files, no processes. `load_config_file` is the only reader and sits at the bottom.
Schema-compatible with fractal-server's SLURM config file; every model refuses unknown keys.

Merge order for one task (later wins; `extra_lines` are concatenated in the same order):
    default_slurm_config  ->  gpu_slurm_config (only if needs_gpu)  ->  the task's resources
"""

from __future__ import annotations

import json
import re
from difflib import get_close_matches
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .directives import KEYED, check_directive
from .errors import ConfigError
from .quoting import posix_username
from .retries import RetryAsks, RetryPolicy
from .units import parse_memory_mb, parse_time_minutes

_SHELL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_time(value: str | None) -> str | None:
    if value is not None:
        parse_time_minutes(value)
    return value


Memory = Annotated[int, BeforeValidator(parse_memory_mb)]
SlurmTime = Annotated[str, BeforeValidator(lambda v: _check_time(str(v)))]


def check_extra_lines(lines: list[str], set_keys: set[str], where: str) -> None:
    """Refuse extra_lines that set managed directives or ones a set config key already sets
    (every option of every directive line, read as sbatch reads it: see directives.py)."""
    prefix = f"{where}.extra_lines" if where else "extra_lines"
    for i, line in enumerate(lines):
        if "\n" in line or "\r" in line:
            raise ValueError(f"{prefix}[{i}] contains a line break: one line per entry")
        try:
            check_directive(line, set_keys)
        except ValueError as exc:
            raise ValueError(f"{prefix}[{i}] {exc}: {line!r}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SlurmOptions(_Strict):
    """Options shared by a config set and a task's overrides (`mem` and `time` are per task)."""

    partition: str | None = None
    mem: Memory | None = Field(default=None, description="per task, MB or '4G'")
    time: SlurmTime | None = Field(default=None, description="per task")
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    gpus: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    nodelist: str | None = None
    extra_lines: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _extra_lines(self) -> _SlurmOptions:
        check_extra_lines(self.extra_lines, self.model_fields_set - {"extra_lines"}, "")
        return self


class SlurmConfigSet(_SlurmOptions):
    """One set of SLURM options (`default_slurm_config` or `gpu_slurm_config`)."""

    cpus_per_task: int = Field(default=1, ge=1)
    pre_submission_commands: list[str] = Field(default_factory=list)
    shebang_line: str = "#!/bin/bash"
    use_mem_per_cpu: bool = False

    @field_validator("shebang_line")
    @classmethod
    def _shebang(cls, v: str) -> str:
        if not v.startswith("#!") or "\n" in v:
            raise ValueError(f"shebang_line must be one line starting with '#!', got {v!r}")
        return v

    @field_validator("pre_submission_commands")
    @classmethod
    def _no_pre_submission(cls, v: list[str]) -> list[str]:
        # Accepted for compatibility with fractal-server's files; running admin shell commands
        # as the user before sbatch would need more than the sudo whitelist allows.
        if v:
            raise ValueError(
                "pre_submission_commands is not supported: put setup in extra_lines instead"
            )
        return v


class BatchingConfig(_Strict):
    """Limits for packing tasks into jobs. Targets are preferred sizes, max are hard caps.

    A target set above its max is refused; a target left at its default is read as capped by
    the max (so `{"max_num_jobs": 4}` alone works: the run is squeezed into 4 jobs).
    """

    target_num_jobs: int = Field(default=10, ge=1)
    max_num_jobs: int = Field(default=50, ge=1)
    target_cpus_per_job: int = Field(default=1, ge=1)
    max_cpus_per_job: int = Field(default=2, ge=1)
    target_mem_per_job: Memory = 4000
    max_mem_per_job: Memory = 16000
    cap_jobs_to_partition: bool = Field(
        default=True,
        description="make no more jobs than the partition can run at once (its nodes' CPUs "
        "and memory); false: always spread over target_num_jobs",
    )

    @model_validator(mode="after")
    def _order(self) -> BatchingConfig:
        for target, cap in (
            ("target_num_jobs", "max_num_jobs"),
            ("target_cpus_per_job", "max_cpus_per_job"),
            ("target_mem_per_job", "max_mem_per_job"),
        ):
            if target in self.model_fields_set and getattr(self, target) > getattr(self, cap):
                raise ValueError(f"{target} ({getattr(self, target)}) exceeds {cap}")
        return self


#: The per-task resource keys that pick *whose* resources a job uses: a task may set them only
#: to a value the admin lists in `task_allowed_values`.
GUARDED_TASK_KEYS = ("account", "qos", "partition", "gres", "gpus", "constraint")


def _allow_list(value: Any) -> Any:
    if value != "*" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f'give a list of strings, or "*" for any; got {value!r}')
    return value


AllowList = Annotated[list[str] | Literal["*"], BeforeValidator(_allow_list)]


class TaskAllowedValues(_Strict):
    """Per key, the values a task's resources may ask for (`"*"`: any). Unlisted: none."""

    account: AllowList | None = None
    qos: AllowList | None = None
    partition: AllowList | None = None
    gres: AllowList | None = None
    gpus: AllowList | None = None
    constraint: AllowList | None = None


def _user_names(value: AllowList) -> AllowList:
    if value != "*":
        for name in value:
            posix_username(name, "user name")
    return value


class ImpersonationPolicy(_Strict):
    """Whom the server may act as (checked by policy.py before any command runs as them)."""

    min_uid: int = Field(default=1000, ge=1, description="lower uids are system accounts")
    allowed_users: Annotated[AllowList, AfterValidator(_user_names)] = "*"
    denied_users: Annotated[list[str], AfterValidator(_user_names)] = Field(default_factory=list)
    ssh_keys_dir: str | None = Field(
        default=None, description="every Profile's ssh_key_path must lie under it"
    )
    sudo_path: str = "/usr/bin/sudo"

    @field_validator("ssh_keys_dir", "sudo_path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or any(c in v for c in "\0\n\r")):
            raise ValueError(f"must be an absolute path, got {v!r}")
        return v


def check_relative_path(value: str, where: str) -> str:
    """A path that must stay under a base directory: relative, no `..`, no line breaks."""
    if not value or value.startswith("/") or value.startswith("~"):
        raise ValueError(f"{where} must be a relative path, got {value!r}")
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"{where} must not climb out with '..', got {value!r}")
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"{where} contains a control character: {value!r}")
    return value


class SlurmRunnerConfig(_Strict):
    """The admin's whole config file."""

    default_slurm_config: SlurmConfigSet = Field(default_factory=SlurmConfigSet)
    gpu_slurm_config: SlurmConfigSet | None = None
    batching_config: BatchingConfig = Field(default_factory=BatchingConfig)
    user_local_exports: dict[str, str] = Field(default_factory=dict)
    python: str = Field(default="python3", description="interpreter that runs the worker")
    max_script_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # A bigger result stays in the task's own --out-json file; its record says so.
    max_result_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    impersonation: ImpersonationPolicy = Field(default_factory=ImpersonationPolicy)
    allow_task_extra_lines: bool = Field(
        default=False, description="may a task's resources carry extra_lines"
    )
    task_allowed_values: TaskAllowedValues = Field(default_factory=TaskAllowedValues)
    retry: RetryPolicy = Field(
        default_factory=dict,
        description="per failure cause: max_attempts, and how mem and time grow (retries.py)",
    )

    @field_validator("user_local_exports", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("user_local_exports")
    @classmethod
    def _exports(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not _SHELL_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid shell variable name")
            check_relative_path(path, f"user_local_exports.{name}")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"python must be one command without spaces, got {v!r}")
        return v


class TaskResources(_SlurmOptions):
    """A task's own resource overrides; unset fields fall back to the admin's config."""

    cpus_per_task: int | None = Field(default=None, ge=1)
    needs_gpu: bool = False
    tasks_per_job: int | None = Field(default=None, ge=1)
    parallel_tasks_per_job: int | None = Field(default=None, ge=1)
    retry: RetryAsks | None = Field(
        default=None, description="per cause, fewer attempts than the admin's retry policy"
    )


class JobResources(BaseModel):
    """The merged per-task view that batching and the script are built from."""

    model_config = ConfigDict(frozen=True)

    partition: str | None
    cpus_per_task: int
    mem_mb: int | None
    time_minutes: int | None
    account: str | None
    qos: str | None
    gres: str | None
    gpus: str | None
    constraint: str | None
    exclude: str | None
    nodelist: str | None
    extra_lines: tuple[str, ...]
    shebang_line: str
    use_mem_per_cpu: bool
    tasks_per_job: int | None
    parallel_tasks_per_job: int | None


_OVERRIDABLE = ("partition", "account", "qos", "gres", "gpus", "constraint", "exclude", "nodelist")


def merge_resources(config: SlurmRunnerConfig, task: TaskResources | None = None) -> JobResources:
    """default_slurm_config, then gpu_slurm_config if the task needs a GPU, then the task."""
    task = task or TaskResources()
    layers: list[BaseModel] = [config.default_slurm_config]
    if task.needs_gpu:
        if config.gpu_slurm_config is None:
            raise ConfigError("resources.needs_gpu is true but the config has no gpu_slurm_config")
        layers.append(config.gpu_slurm_config)
    layers.append(task)

    merged: dict[str, Any] = {"extra_lines": []}
    set_keys: set[str] = set()
    for layer in layers:
        for key in layer.model_fields_set:
            value = getattr(layer, key)
            if key == "extra_lines":
                merged["extra_lines"].extend(value)
            elif value is not None:
                merged[key] = value
                set_keys.add(key)
    base = config.default_slurm_config
    try:
        check_extra_lines(merged["extra_lines"], set_keys & set(KEYED), "merged")
    except ValueError as exc:
        raise ConfigError(f"resources: {exc}") from None
    return JobResources(
        **{key: merged.get(key, getattr(base, key)) for key in _OVERRIDABLE},
        cpus_per_task=merged.get("cpus_per_task", base.cpus_per_task),
        mem_mb=merged.get("mem", base.mem),
        time_minutes=parse_time_minutes(t) if (t := merged.get("time", base.time)) else None,
        extra_lines=tuple(merged["extra_lines"]),
        shebang_line=merged.get("shebang_line", base.shebang_line),
        use_mem_per_cpu=merged.get("use_mem_per_cpu", base.use_mem_per_cpu),
        tasks_per_job=task.tasks_per_job,
        parallel_tasks_per_job=task.parallel_tasks_per_job,
    )


def _model_named(name: str) -> type[BaseModel] | None:
    """One of our models by class name (a ValidationError names only its root model)."""
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name and cls.__module__.startswith("slurmrunner."):
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _keys_at(model: type[BaseModel] | None, path: tuple[Any, ...]) -> list[str]:
    """The keys the model nested at `path` takes (none if `path` leads out of models)."""
    for part in path:
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return []
        candidates = (field.annotation, *get_args(field.annotation))
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return list(model.model_fields) if model else []


def _unknown_key(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    close = get_close_matches(str(loc[-1]), _keys_at(root, loc[:-1]), n=1) if loc else []
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming its key path, e.g. `default_slurm_config.mem: ...`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = ".".join(p for p in (prefix, loc) if p) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(_model_named(exc.title), tuple(err["loc"]))
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> SlurmRunnerConfig:
    try:
        return SlurmRunnerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}:\n{describe_validation_error(exc)}") from None


def parse_resources(data: Any, source: str = "resources") -> TaskResources:
    try:
        return TaskResources.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_json_or_toml(path: str | Path) -> Any:
    """Read a .json or .toml file; errors name the file and the place."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def load_config_file(path: str | Path) -> SlurmRunnerConfig:
    return parse_config(load_json_or_toml(path), str(path))
