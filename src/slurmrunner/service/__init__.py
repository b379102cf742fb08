"""The multi-user service (`slurmrunner serve`): users, API tokens, Resources and Profiles over
HTTP, on SQLAlchemy (SQLite or PostgreSQL) with Alembic migrations shipped in `migrations/`.

    app.py      create_app(): database, routers, error answers
    db.py       engine and sessions from a URL      migrate.py  alembic upgrade, from Python
    models.py   the tables                          schemas/    request and response bodies
    auth.py     tokens: made, hashed, looked up     deps.py     who is asking (FastAPI deps)
    accounts.py users and tokens                    clusters.py Resources and Profiles
    checks.py   config and Profile checks, core_profile() for the run routes
    routers/    the HTTP routes
"""
