"""Sessions: one per distribution, plus lint, types and bench.

nox -s core local redis sql mongo   # each distribution's tests
nox -s lint types                   # ruff and mypy --strict
nox -s bench                        # the benchmarks (not run by CI)
"""

from __future__ import annotations

import nox

nox.options.sessions = ["core", "local", "redis", "sql", "mongo", "integration", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True

TEST_REQUIREMENTS = "requirements-test.txt"


def install(session: nox.Session, *distributions: str) -> None:
    editable: list[str] = []
    for distribution in distributions:
        editable += ["-e", f"./{distribution}"]
    session.install(*editable, "-r", TEST_REQUIREMENTS)


@nox.session
def core(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local")
    session.run("pytest", "tests/core", "tests/readme", *session.posargs)


@nox.session
def local(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local")
    session.run("pytest", "tests/local", "tests/conformance", "-k", "local", *session.posargs)


@nox.session
def redis(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local", "cacheme-redis[hiredis]")
    session.run("pytest", "tests/redis", "tests/conformance", "-k", "redis", *session.posargs)


@nox.session
def sql(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local", "cacheme-sql[sqlite,postgres,mysql]")
    session.run(
        "pytest", "tests/sql", "tests/conformance", "-k", "sqlite or postgres or mysql", *session.posargs
    )


@nox.session
def mongo(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local", "cacheme-mongo")
    session.run("pytest", "tests/mongo", "tests/conformance", "-k", "mongo", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    install(session, "cacheme-core", "cacheme-local", "cacheme-redis[hiredis]", "cacheme-sql[sqlite]")
    session.run("pytest", "tests/integration", *session.posargs)


ALL = [
    "cacheme-core",
    "cacheme-local",
    "cacheme-redis[hiredis]",
    "cacheme-sql[sqlite,postgres,mysql]",
    "cacheme-mongo",
]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    install(session, *ALL)
    session.run("mypy", "--strict")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The seed benchmarks against aiocache, cashews and cacheme 0.3.0 (writes benchmarks/RESULTS.md).

    Not run by CI. Arguments go to benchmarks/run.py, e.g. ``nox -s bench -- --quick``;
    ``nox -s bench -- outage [--rounds 3]`` runs benchmarks/outage.py (Redis failing) instead.
    """
    install(session, "cacheme-core", "cacheme-local", "cacheme-redis[hiredis]")
    if session.posargs[:1] == ["outage"]:
        session.run("python", "benchmarks/outage.py", *session.posargs[1:])
    else:
        session.run("python", "benchmarks/run.py", *session.posargs)
