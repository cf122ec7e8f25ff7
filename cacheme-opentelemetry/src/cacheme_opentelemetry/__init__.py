"""OpenTelemetry for cacheme: metrics, load durations and (opt-in) one span per source load.

instrumentation = cacheme_opentelemetry.instrument(spans=True)   # the global providers
...
instrumentation.uninstrument()
"""

from cacheme_opentelemetry.instrumentation import (
    SCOPE,
    VERSION,
    AlreadyInstrumentedError,
    Instrumentation,
    instrument,
    key_hash,
)

__version__ = VERSION

__all__ = ["SCOPE", "AlreadyInstrumentedError", "Instrumentation", "__version__", "instrument", "key_hash"]
