"""mosaic-edge: MoSAiC multi-modal multi-label contrastive learning, from training to Jetson edge hardware."""

from mosaic_edge.contract import Contract
from mosaic_edge.errors import ContractMismatchError, DataError, OptionalDependencyError, UserError
from mosaic_edge.version import __version__

__all__ = ["Contract", "ContractMismatchError", "DataError", "OptionalDependencyError", "UserError", "__version__"]
