"""The PolyaRun controller: a pure `reconcile` plus a thin kopf/Kubernetes I/O layer (never imports torch)."""
__version__ = "0.1.0"
