"""MongoDB storage for cacheme (``mongodb://`` and ``mongodb+srv://`` URLs).

The storage class lives in :mod:`cacheme_mongo.storage`; it is imported when a
MongoDB URL is first used, so importing this package does not import PyMongo.
"""

__all__: list[str] = []
