"""cxr-edge core: data, preprocessing, backbone registry, focal loss, trainer, metrics, Grad-CAM.

Knows nothing of exporters or runtimes.
"""

from core._compat import ensure_torchvision

ensure_torchvision()
