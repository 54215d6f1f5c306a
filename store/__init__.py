"""Persistence shared by the gateway and the workers: settings, the SQL job store and the
artifact store. Imports SQLAlchemy, pydantic and the standard library only (no torch)."""
