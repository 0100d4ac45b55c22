"""Tools for working on the course from a checkout (not part of the installed clipedu package)."""
