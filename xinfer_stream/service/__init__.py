"""Serving many cameras: the camera assignment of a fleet (:class:`Coordinator`) and the fleet
of Ray actors that runs one model over them (:func:`open_fleet`; Ray itself is imported only
when a fleet opens: ``pip install 'xinfer-stream[ray]'``)."""

from ._coordinator import Coordinator, Move
from ._fleet import (ActorEvent, ActorStatistics, CameraOutage, Fleet, FleetItem, FleetOptions,
                     FleetStatistics, open_fleet)

__all__ = ["ActorEvent", "ActorStatistics", "CameraOutage", "Coordinator", "Fleet", "FleetItem",
           "FleetOptions", "FleetStatistics", "Move", "open_fleet"]
