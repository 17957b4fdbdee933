"""What the registry knows about stock ComfyUI node classes (checked against ComfyUI 0.3.64's `/object_info`).

Used to find the usual parameter slots of a workflow, its output kind, and the model files it needs.
Custom nodes are not known here: the analysis says so in a warning and the admin corrects the map.
"""

from __future__ import annotations

from typing import Final

from contracts.messages.render_types import OutputKind, ParameterName

# Sampler nodes: the input that holds the seed, and whether steps/cfg/denoise sit on the node itself.
SAMPLER_SEED_INPUT: Final[dict[str, str]] = {
    "KSampler": "seed",
    "KSamplerAdvanced": "noise_seed",
    "SamplerCustom": "noise_seed",
}
# Samplers whose noise, guidance and schedule come from linked nodes (`noise`, `guider`, `sigmas` inputs).
LINKED_SAMPLERS: Final = frozenset({"SamplerCustomAdvanced"})
SAMPLER_CLASSES: Final = frozenset(SAMPLER_SEED_INPUT) | LINKED_SAMPLERS

# Inputs of a noise source (`RandomNoise`) or a sampler that hold the seed.
SEED_INPUTS: Final = ("seed", "noise_seed")

# Text-encoder nodes and the inputs that take the prompt text.
TEXT_INPUTS: Final[dict[str, tuple[str, ...]]] = {
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("text_g", "text_l"),
    "CLIPTextEncodeSDXLRefiner": ("text",),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl"),
    "CLIPTextEncodeSD3": ("clip_l", "clip_g", "t5xxl"),
    "CLIPTextEncodeHiDream": ("clip_l", "clip_g", "t5xxl", "llama"),
    "CLIPTextEncodeHunyuanDiT": ("bert", "mt5xl"),
    "CLIPTextEncodeLumina2": ("user_prompt",),
    "CLIPTextEncodePixArtAlpha": ("text",),
    "CLIPTextEncodeControlnet": ("text",),
    "TextEncodeQwenImageEdit": ("prompt",),
    "TextEncodeQwenImageEditPlus": ("prompt",),
    "TextEncodeHunyuanVideo_ImageToVideo": ("prompt",),
    "PhotoMakerEncode": ("text",),
}
# For text encoders of custom node packs: string inputs with these names are taken to be the prompt.
GENERIC_TEXT_INPUTS: Final = ("text", "prompt")

# Inputs through which conditioning flows into a node that modifies it (FluxGuidance, ConditioningCombine...).
CONDITIONING_INPUT_HINTS: Final = ("conditioning", "cond")

# Nodes that make the starting latent (or image) and so fix the size of the result.
LATENT_SOURCES: Final = frozenset(
    {
        "EmptyLatentImage",
        "EmptySD3LatentImage",
        "EmptyHunyuanImageLatent",
        "EmptyChromaRadianceLatentImage",
        "EmptyHunyuanLatentVideo",
        "EmptyLTXVLatentVideo",
        "EmptyMochiLatentVideo",
        "EmptyCosmosLatentVideo",
    }
)
# Used as the size source only when there is no latent source (stock-node workflows such as the recordings').
IMAGE_SOURCES: Final = frozenset({"EmptyImage"})
# Nodes whose width/height must follow the image size for the model to condition on it correctly.
SIZE_COMPANIONS: Final[dict[str, dict[str, ParameterName]]] = {
    "CLIPTextEncodeSDXL": {"width": "width", "height": "height", "target_width": "width", "target_height": "height"},
    "ModelSamplingFlux": {"width": "width", "height": "height"},
}
# Nodes that repeat a latent to make a batch (img2img), and the input that says how many.
BATCH_REPEATERS: Final[dict[str, str]] = {"RepeatLatentBatch": "amount", "RepeatImageBatch": "amount"}

# Nodes that load the request's input image, and the input holding its file name.
IMAGE_LOADERS: Final[dict[str, str]] = {"LoadImage": "image"}

# Output nodes and what they produce. Unknown output nodes (custom packs) get a warning.
OUTPUT_KINDS: Final[dict[str, OutputKind]] = {
    "SaveImage": "image",
    "PreviewImage": "image",
    "SaveImageWebsocket": "image",
    "SaveAnimatedWEBP": "video",
    "SaveAnimatedPNG": "video",
    "SaveWEBM": "video",
    "SaveVideo": "video",
    "VHS_VideoCombine": "video",  # ComfyUI-VideoHelperSuite
    "SaveAudio": "audio",
    "SaveAudioMP3": "audio",
    "SaveAudioOpus": "audio",
    "PreviewAudio": "audio",
    "SaveGLB": "other",
    "Preview3D": "other",
    "Preview3DAnimation": "other",
    "SaveSVGNode": "other",
    "SaveLatent": "other",
    "PreviewAny": "other",
    "MaskPreview": "image",
}
# Output nodes whose result the hub cannot collect: no file in `executed`/history outputs and no image frame
# (PreviewAny's output is `{"text": [...]}`, as recorded). SaveImageWebsocket is collected from its binary frames.
UNCOLLECTABLE_OUTPUTS: Final[dict[str, str]] = {"PreviewAny": "shows text in the ComfyUI editor only"}
# When a workflow has several kinds of output, the one it is made for: a video workflow may preview a frame.
OUTPUT_KIND_PRIORITY: Final[tuple[OutputKind, ...]] = ("video", "image", "audio", "other")

# Loader nodes: which input names a model file, and the ComfyUI model folder it lives in (as `GET /models`
# names the folders; "clip" files are listed under "text_encoders", "unet" ones under "diffusion_models").
MODEL_LOADERS: Final[dict[str, dict[str, str]]] = {
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CheckpointLoader": {"ckpt_name": "checkpoints", "config_name": "configs"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLora": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLoraModelOnly": {"ckpt_name": "checkpoints"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "CreateHookLora": {"lora_name": "loras"},
    "CreateHookLoraModelOnly": {"lora_name": "loras"},
    "VAELoader": {"vae_name": "vae"},
    "UpscaleModelLoader": {"model_name": "upscale_models"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "TripleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3)},
    "QuadrupleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3, 4)},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    "HypernetworkLoader": {"hypernetwork_name": "hypernetworks"},
    "PhotoMakerLoader": {"photomaker_model_name": "photomaker"},
    "ModelPatchLoader": {"name": "model_patches"},
    "DiffusersLoader": {"model_path": "diffusers"},
}
# Loader choices that are built into ComfyUI rather than files in a model folder.
BUILT_IN_MODEL_CHOICES: Final[dict[str, frozenset[str]]] = {
    "VAELoader": frozenset({"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"}),
}
# For loaders of custom node packs: inputs with these names are taken to name files in these folders.
GENERIC_MODEL_INPUTS: Final[dict[str, str]] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "unet_name": "diffusion_models",
    "control_net_name": "controlnet",
    "upscale_model_name": "upscale_models",
}
MODEL_FILE_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
