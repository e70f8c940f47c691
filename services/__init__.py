"""Orchestration between the UI and the rest: ``workbench`` is the one facade the app calls.

A regular package (not a namespace one), so that once the project is installed no other ``services``
folder on sys.path (a copy of the packages, another project's) merges into it.
"""
