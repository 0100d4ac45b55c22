"""clipedu: build CLIP from scratch, one verifiable piece at a time.

The modules follow the course: ``patches`` (01), ``attention`` and ``transformer`` (02-03),
``vision`` (03), ``tokenizer`` and ``text`` (04), ``clip`` and ``losses`` (05), ``data`` and
``train`` (06), ``evaluate`` (07, 10), ``viz`` (05, 08, 09), ``blip2`` (11), ``pretrained`` (12).
"""

from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, TextConfig, VisionConfig, preset

__version__ = "0.1.0"

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "preset", "__version__"]
