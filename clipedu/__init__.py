"""clipedu: build CLIP from scratch, one verifiable piece at a time.

The modules follow the course: ``config`` and ``runtime`` (00), ``patches`` (01), ``attention``
and ``transformer`` (02-03), ``vision`` (03), ``tokenizer`` and ``text`` (04), ``clip`` and
``losses`` (05), ``data``, ``recipe``, ``loop``, ``train`` and ``runs`` (06), ``evaluate`` (07, 10),
``interpret`` (08), ``geometry`` (09), ``blip2`` (11), ``pretrained`` (12), ``distributed`` (13);
``viz`` draws them. CONTRIBUTING.md maps each module to its notebook and what it may import.
"""

from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, TextConfig, VisionConfig, preset

__version__ = "0.1.0"

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "preset", "__version__"]
