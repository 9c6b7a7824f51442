"""Teacher VLMs behind one interface, with one runtime for limits, retries, caching and accounting.

Search code builds a client and asks it for completions::

    client = build_client("openai", "Qwen/Qwen2.5-VL-72B-Instruct", base_urls=["http://gpu1:8000/v1"],
                          resize=Resize(max_pixels=12_845_056), cache_path=run_dir / "teacher_cache.sqlite")
    chat = [Message("system", ("...",)), Message("user", (ImageRef(path), "Where is the mug?"))]
    replies = await client.generate(chat, SamplingParams(n=3))
    geometry = client.geometry(chat[1].images[0])  # teacher coordinates are in its "model" frame

Backends (``openai``, ``anthropic``; ``vllm``, ``hf``, ``sim`` when installed) are imported only when chosen.
"""

from trace_forge.teachers.base import (
    Chat,
    Completion,
    Message,
    SamplingParams,
    Teacher,
    backend_names,
    load_backend,
    make_teacher,
    register_backend,
    register_teacher,
)
from trace_forge.teachers.cache import ResponseCache
from trace_forge.teachers.errors import (
    PromptTooLong,
    RateLimited,
    TeacherError,
    TeacherFormatError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
)
from trace_forge.teachers.images import EncodedImage, ImageEncoder, ImageRef
from trace_forge.teachers.runtime import RuntimeConfig, TeacherClient, build_client
from trace_forge.teachers.usage import DEFAULT_PRICES, Price, Usage, load_price_table

__all__ = [
    "Chat",
    "Completion",
    "Message",
    "SamplingParams",
    "Teacher",
    "backend_names",
    "load_backend",
    "make_teacher",
    "register_backend",
    "register_teacher",
    "ResponseCache",
    "PromptTooLong",
    "RateLimited",
    "TeacherError",
    "TeacherFormatError",
    "TeacherRejected",
    "TeacherTimeout",
    "TeacherUnavailable",
    "EncodedImage",
    "ImageEncoder",
    "ImageRef",
    "RuntimeConfig",
    "TeacherClient",
    "build_client",
    "DEFAULT_PRICES",
    "Price",
    "Usage",
    "load_price_table",
]
