"""The database layer: the only package that imports asyncpg.

Owns the connection pool, the migrations runner, the embedded PostgreSQL used by standalone mode
and the test fixtures, and the repositories that read and write Kannon's tables.
"""
