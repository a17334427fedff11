"""The simulated cultures behind one interface (:class:`base.Culture`), one module a model.

- :mod:`.base`: the interface, advanced interval by interval in sample time with the
  pulses the device executed; what a pulse delivers (current, charge).
- :mod:`.poisson_burst`: Poisson units lifted by a network-burst process.
- :mod:`.network`: a spiking network that learns (the default), its numba kernels in
  :mod:`.network_kernels`.
"""

from __future__ import annotations

from importlib import import_module

from hardware_sim.cultures.base import Culture

#: Culture models by name, for the sim driver's ``culture=`` parameter: the module here and
#: its class. Naming them imports nothing; :func:`culture_class` imports one (numba too).
CULTURES: dict[str, tuple[str, str]] = {
    "poisson_burst": ("poisson_burst", "PoissonBurstCulture"),
    "network": ("network", "NetworkCulture"),
}


def culture_class(name: str) -> type[Culture]:
    """The culture model called ``name`` (a key of :data:`CULTURES`), imported now."""
    module, cls = CULTURES[name]
    return getattr(import_module(f"hardware_sim.cultures.{module}"), cls)
