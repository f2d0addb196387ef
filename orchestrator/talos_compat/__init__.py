"""The Talos-compatible front: ``Scan`` and ``Analyze`` with Talos's arguments, run on Ray."""

from orchestrator.talos_compat.scan import Analyze, Scan

__all__ = ["Analyze", "Scan"]
