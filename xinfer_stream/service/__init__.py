"""Serving many cameras: the camera assignment of a fleet (``Coordinator``) and the fleet of Ray
actors that runs a model over them (``open_fleet``, needs ``pip install 'xinfer-stream[ray]'``).
"""

from ._coordinator import Coordinator, Move

__all__ = ["Coordinator", "Move"]
