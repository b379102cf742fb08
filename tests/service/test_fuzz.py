"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis): whatever a
client sends, valid for the schema or not, as a superuser or as a plain user, the answer is
never a 5xx. Bounded: a few examples per operation and mode (the API has ~20 operations)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from slurmrunner.service import accounts, clusters
from slurmrunner.service.app import create_app
from slurmrunner.service.schemas.clusters import ProfileCreate, ResourceCreate
from slurmrunner.service.schemas.users import UserCreate
from tests.conftest import DOC_SNIPPET_1

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402

# $SLURMRUNNER_FUZZ_EXAMPLES runs a deeper search (e.g. 200) by hand.
EXAMPLES = int(os.environ.get("SLURMRUNNER_FUZZ_EXAMPLES", "15"))


def _seed(app) -> dict[str, dict[str, str]]:
    """A Resource, a Profile, superusers and a user (low ids, so generated ids hit rows)."""
    with app.state.sessionmaker() as db:
        resource = clusters.create_resource(
            db,
            ResourceCreate(
                name="hpc",
                type="slurm_sudo",
                # No sinfo at planning: this machine's SLURM may be down (a 60 s wait each).
                jobs_runner_config=DOC_SNIPPET_1
                | {"batching_config": {"cap_jobs_to_partition": False}},
            ),
        )
        profile = clusters.create_profile(
            db,
            ProfileCreate(
                name="p", resource_id=resource.id, username="nobody", jobs_remote_dir="/tmp/n"
            ),
        )
        root = accounts.create_user(db, UserCreate(email="root@x.org", is_superuser=True))
        user = accounts.create_user(db, UserCreate(email="u@x.org", profile_id=profile.id))
        # More superusers: a fuzzed delete or demotion of one must not lock the test out.
        for i in range(3):
            accounts.create_user(db, UserCreate(email=f"root{i}@x.org", is_superuser=True))
        return {
            name: {"Authorization": f"Bearer {accounts.issue_token(db, who, 'fuzz')[1]}"}
            for name, who in (("superuser", root), ("user", user))
        }


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(db_url, mode):
    app = create_app(db_url)
    headers = _seed(app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # The routes' code is the same on both databases: PostgreSQL gets a third of the search
    # (what differs there, constraint errors and types, shows in a few examples).
    examples = EXAMPLES if db_url.startswith("sqlite") else max(1, EXAMPLES // 3)
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            for who in ("user", "superuser"):
                response = case.call(headers=headers[who])
                assert response.status_code < 500, (
                    who,
                    case.method,
                    case.formatted_path,
                    response.text,
                )

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing in it can be made invalid (e.g. /healthz has no inputs).
            assert mode == GenerationMode.NEGATIVE, operation.label
