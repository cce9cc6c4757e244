"""Alembic migrations of the controller's schema, from the first released schema on.

``edge-controller migrate`` (and every ``edge-controller run``) upgrades a database to the
newest revision; ``migrating.upgrade`` is the API. New revisions: change ``db.py``, then
``alembic -c controller/edgefleet/controller/migrations/alembic.ini revision --autogenerate``
against a database at head, and review what it wrote.
"""
