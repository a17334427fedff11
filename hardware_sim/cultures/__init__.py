"""The simulated cultures behind one interface (:class:`base.Culture`), one module a model.

- :mod:`.base`: the interface, advanced interval by interval in sample time with the
  pulses the device executed; what a pulse delivers (current, charge).
- :mod:`.poisson_burst`: Poisson units lifted by a network-burst process.
- :mod:`.network`: a spiking network that learns (the default), its numba kernels in
  :mod:`.network_kernels`.
"""

from __future__ import annotations

from hardware_sim.cultures.base import Culture
from hardware_sim.cultures.network import NetworkCulture
from hardware_sim.cultures.poisson_burst import PoissonBurstCulture

#: Culture implementations by name, for the sim driver's ``culture=`` parameter.
CULTURES: dict[str, type[Culture]] = {
    "poisson_burst": PoissonBurstCulture,
    "network": NetworkCulture,
}
