"""The network-definition core: tensors, the op table, modules, networks and the builder.

Layer code is written against ``core.functional`` and ``core.module`` only; the backends
(``core.torch_backend`` now, a TensorRT one next) lower the recorded networks.
"""

from core.dtype import DataType
from core.module import Module, ModuleList, Parameter
from core.network import Dim, Network, default_net, net_guard
from core.tensor import Tensor

__all__ = ["DataType", "Dim", "Module", "ModuleList", "Network", "Parameter", "Tensor", "default_net", "net_guard"]
