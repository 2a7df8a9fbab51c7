"""edgeprune: complexity-driven CNN compression for edge devices."""

from edgeprune.complexity import Profile
from edgeprune.errors import EdgepruneError
from edgeprune.graph import profile
from edgeprune.io import load, save
from edgeprune.models import create, list_models
from edgeprune.pruning import PruneResult, prune

__version__ = "0.1.0"
__all__ = ["EdgepruneError", "Profile", "PruneResult", "create", "list_models", "load", "profile", "prune", "save"]
