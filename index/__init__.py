"""Knowledge index: ingest FAQ entries and manuals, chunk them, embed them, search them.

Errors raised by this package:

- ``index.ingest.IngestError``: a source file cannot be read (names the file and line).
- ``index.store.IndexNotFoundError``: no index has been built at the given path.
- ``index.embed.EmbedderLoadError``: an embedding model cannot be loaded.

This package imports neither ``assistant`` nor ``eval``.
"""
