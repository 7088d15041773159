"""The data: MNIST (shipped subset or the user's files), ColoredMNIST, the captions and prompts
of the CLIPs, and CLIP's own tokenizer (``clip_tokenizer``), image preprocessing
(``preprocess``) and zero-shot prompts (``imagenet_templates``, ``zero_shot_prompts``); a
user's images on disk (``image_folder``, ``image_csv``) and a task as one value (``Task``,
``folder_task``)."""

from .folders import (
    FolderImages as FolderImages,
    ImageSet as ImageSet,
    image_csv as image_csv,
    image_folder as image_folder,
)
from .images import (
    CLIP_MEAN as CLIP_MEAN,
    CLIP_STD as CLIP_STD,
    Preprocessing as Preprocessing,
    imagenet_templates as imagenet_templates,
    preprocess as preprocess,
    zero_shot_prompts as zero_shot_prompts,
)
from .task import (
    Split as Split,
    Task as Task,
    folder_task as folder_task,
)
from .tokenizer import (
    ClipTokenizer as ClipTokenizer,
    clip_tokenizer as clip_tokenizer,
    word_tokenizer as word_tokenizer,
)
