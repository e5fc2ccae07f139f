"""A minimal Django project: one view that queries the default (sqlite3) database."""
