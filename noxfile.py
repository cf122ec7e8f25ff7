"""Sessions: one per distribution, each run twice, plus lint, types and bench.

nox -s core local redis sql mongo prometheus opentelemetry integration   # the driver matrix
nox -s lint types                               # ruff and mypy --strict
nox -s bench                                    # the benchmarks (not run by CI)

Each test session is parametrized over ``drivers``:

- ``lowest``: every third-party dependency at the lower bound its distribution declares
  (``name>=X`` in a cacheme-*/pyproject.toml becomes ``name==X`` in a constraints file
  that pip is given; that pins exactly the declared number, not the lowest release pip can
  find). Anything else (transitive dependencies, the test tools) is the newest that fits.
- ``newest``: no constraints, everything upgraded to the newest release (what CI runs).

``nox -s redis`` runs both; ``nox -s "redis(drivers='lowest')"`` one of them;
``nox -k lowest`` every lowest session. Each prints the versions it installed.
A third-party dependency declared without a lower bound fails the lowest sessions.
"""

from __future__ import annotations

import nox
import nox.project
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.options.sessions = ["core", "local", "redis", "sql", "mongo", "integration", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True

TEST_REQUIREMENTS = "requirements-test.txt"
# Every test session installs every distribution: conftest.py loads each module of
# tests/fixtures as a plugin, and those import redis, asyncpg and aiomysql, whatever runs.
ALL = [
    "cacheme-core",
    "cacheme-local",
    "cacheme-redis[hiredis]",
    "cacheme-sql[sqlite,postgres,mysql]",
    "cacheme-mongo",
    "cacheme-prometheus",
    "cacheme-opentelemetry",
]
DRIVERS = nox.parametrize("drivers", ["lowest", "newest"])
# Printed with the drivers by every test session: they shape the run too.
TEST_TOOLS = ["pytest", "pytest-asyncio"]
PRINT_VERSIONS = (
    "import sys\n"
    "from importlib.metadata import version\n"
    "print('installed:', ' '.join(f'{name}=={version(name)}' for name in sys.argv[1:]))\n"
)


def third_party_requirements(distribution: str) -> list[Requirement]:
    """What ``distribution`` (a folder name with optional extras, e.g. ``cacheme-sql[mysql]``)
    requires from outside the repository, as its pyproject.toml declares it."""
    wanted = Requirement(distribution)
    project = nox.project.load_toml(f"{wanted.name}/pyproject.toml")["project"]
    declared: list[str] = list(project.get("dependencies", []))
    for extra in sorted(wanted.extras):
        declared += project["optional-dependencies"][extra]
    requirements = [Requirement(text) for text in declared]
    return [r for r in requirements if not canonicalize_name(r.name).startswith("cacheme-")]


def lower_bound_pins(requirements: list[Requirement]) -> list[str]:
    """``name==X`` for each requirement's declared ``>=X``; the highest one where several declare it."""
    lowest: dict[str, Version] = {}
    for requirement in requirements:
        bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if len(bounds) != 1:
            raise ValueError(f"{requirement} must declare exactly one lower bound (>=) to be tested at it")
        name = canonicalize_name(requirement.name)
        lowest[name] = max(bounds[0], lowest.get(name, bounds[0]))
    return [f"{name}=={version}" for name, version in sorted(lowest.items())]


def install(session: nox.Session, drivers: str, *distributions: str) -> None:
    """Install ``distributions`` (editable) and the test tools, with their third-party
    dependencies at the declared lower bounds (``drivers="lowest"``) or the newest."""
    editable: list[str] = []
    requirements: list[Requirement] = []
    for distribution in distributions:
        editable += ["-e", f"./{distribution}"]
        requirements += third_party_requirements(distribution)
    if drivers == "lowest":
        constraints = f"{session.create_tmp()}/lower-bounds.txt"
        with open(constraints, "w") as file:
            file.write("\n".join(lower_bound_pins(requirements)) + "\n")
        session.install("-c", constraints, *editable, "-r", TEST_REQUIREMENTS)
    elif drivers == "newest":
        session.install("--upgrade", "--upgrade-strategy", "eager", *editable, "-r", TEST_REQUIREMENTS)
    else:
        session.error(f"drivers must be 'lowest' or 'newest', not {drivers!r}")
    names = sorted({canonicalize_name(r.name) for r in requirements}) + TEST_TOOLS
    session.run("python", "-c", PRINT_VERSIONS, *names)


@nox.session
@DRIVERS
def core(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/core", "tests/readme", *session.posargs)


@nox.session
@DRIVERS
def local(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/local", "tests/conformance", "-k", "local", *session.posargs)


@nox.session
@DRIVERS
def redis(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/redis", "tests/conformance", "-k", "redis", *session.posargs)


@nox.session
@DRIVERS
def sql(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run(
        "pytest", "tests/sql", "tests/conformance", "-k", "sqlite or postgres or mysql", *session.posargs
    )


@nox.session
@DRIVERS
def mongo(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/mongo", "tests/conformance", "-k", "mongo", *session.posargs)


@nox.session
@DRIVERS
def prometheus(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/prometheus", *session.posargs)


@nox.session
@DRIVERS
def opentelemetry(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/opentelemetry", *session.posargs)


@nox.session
@DRIVERS
def integration(session: nox.Session, drivers: str) -> None:
    install(session, drivers, *ALL)
    session.run("pytest", "tests/integration", "tests/loops", "tests/fleet", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    install(session, "newest", *ALL)
    session.run("mypy", "--strict")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The seed benchmarks against aiocache, cashews and cacheme 0.3.0 (writes benchmarks/RESULTS.md).

    Not run by CI. Arguments go to benchmarks/run.py, e.g. ``nox -s bench -- --quick``;
    ``nox -s bench -- outage [--rounds 3]`` runs benchmarks/outage.py (Redis failing) instead;
    ``nox -s bench -- storm [--rounds 3]`` runs benchmarks/storm.py (one hot key at its expiry);
    ``nox -s bench -- coherence [--rounds 3]`` runs benchmarks/coherence.py (the invalidation bus
    between two processes, over Redis and the local PostgreSQL);
    ``nox -s bench -- fleet [--rounds 3] [--quick]`` runs benchmarks/fleet.py (4 processes on one
    Zipf trace, leases on and off, against the commit before leases; needs Redis on 127.0.0.1:6379);
    ``nox -s bench -- memory [--baseline COMMIT] [--write]`` runs benchmarks/memory.py (bytes per
    local entry at 1,000,000 entries).
    """
    distributions = ["cacheme-core", "cacheme-local", "cacheme-redis[hiredis]"]
    if session.posargs[:1] == ["coherence"]:
        distributions.append("cacheme-sql[postgres]")  # the PostgreSQL bus
    install(session, "newest", *distributions)
    if session.posargs[:1] == ["outage"]:
        session.run("python", "benchmarks/outage.py", *session.posargs[1:])
    elif session.posargs[:1] == ["storm"]:
        session.run("python", "benchmarks/storm.py", *session.posargs[1:])
    elif session.posargs[:1] == ["coherence"]:
        session.run("python", "benchmarks/coherence.py", *session.posargs[1:])
    elif session.posargs[:1] == ["fleet"]:
        session.run("python", "benchmarks/fleet.py", *session.posargs[1:])
    elif session.posargs[:1] == ["memory"]:
        session.run("python", "benchmarks/memory.py", *session.posargs[1:])
    else:
        session.run("python", "benchmarks/run.py", *session.posargs)
