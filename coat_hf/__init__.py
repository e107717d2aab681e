"""coat-hf: correspondence-driven object appearance transfer (COAT, BMVC 2022) for the Hugging Face ecosystem.

Importing the package registers ``COATConfig``/``COATModel`` with transformers' Auto classes and the
``coat-appearance-transfer`` pipeline task.
"""

from transformers import AutoConfig, AutoModel

from .configuration_coat import COATConfig
from .correspondence import Correspondence, align_features, cosine_similarity, mutual_consistency
from .modeling_coat import COATModel, COATOutput, COATPreTrainedModel
from .pipeline_coat import COATAppearanceTransferPipeline, register_pipeline

__version__ = "0.1.0"

AutoConfig.register(COATConfig.model_type, COATConfig, exist_ok=True)
AutoModel.register(COATConfig, COATModel, exist_ok=True)
register_pipeline()

__all__ = [
    "COATAppearanceTransferPipeline",
    "COATConfig",
    "COATModel",
    "COATOutput",
    "COATPreTrainedModel",
    "Correspondence",
    "align_features",
    "cosine_similarity",
    "mutual_consistency",
]
