"""The repository store: formats, crypto and sans-I/O cores shared by provisioning and sync.

See ``python-services/docs/repository-format.md``.
"""
