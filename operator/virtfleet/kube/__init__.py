"""The one adapter that talks to the Kubernetes API (besides kopf's own watches and status patches)."""
