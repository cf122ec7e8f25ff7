"""In-process storages for cacheme: ``local://tlfu`` and ``local://lru``."""
