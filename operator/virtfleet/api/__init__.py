"""API models: pydantic types of virtfleet's custom resources, the single source of the CRD schemas.

This layer imports nothing else from virtfleet and performs no I/O.
"""
