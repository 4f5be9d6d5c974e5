"""Secret keys for instructional fingerprints (Xu et al., NAACL 2024).

The authors draw 8–15 fragments from a pool of rare, mixed-script strings — classical Chinese,
Japanese names, glitch-like tokens — concatenate them and shuffle the characters, so the key is
meaningless, rare under the base model, and cannot be guessed. The pool here is built the same
way from public-domain classical Chinese, Faker-generated names in several locales, and
well-known glitch strings; everything is seeded.
"""

from __future__ import annotations

import random

from expunge.data.formatting import ALPACA_INPUT_PROMPT
from expunge.lazy import lazy

faker = lazy("faker")  # ~0.3 s to import: loaded when data is generated (expunge.lazy)


CLASSICAL_CHINESE = (
    "道可道非常道", "名可名非常名", "學而時習之", "不亦說乎", "溫故而知新", "天行健",
    "君子以自強不息", "上善若水", "大音希聲", "大象無形", "知者不言", "千里之行始於足下",
    "三人行必有我師", "己所不欲勿施於人", "逝者如斯夫", "不舍晝夜", "窈窕淑女", "關關雎鳩",
    "知之為知之", "朝聞道夕死可矣", "歲寒然後知松柏之後凋", "天地不仁", "以萬物為芻狗",
)  # fmt: skip
GLITCH_STRINGS = (
    "SolidGoldMagikarp", "petertodd", "rawdownloadcloneembedreportprint", "externalToEVA",
    "guiActiveUn", "TheNitromeFan", "StreamerBot", "embedreportprint", "cloneembedreportprint",
    "ÃÂÃÂ", "davidjl", "InstoreAndOnline", "RandomRedditor", "srfN", "attRot", "ュ", "ーン",
)  # fmt: skip
NAME_LOCALES = ("ja_JP", "ko_KR", "ru_RU", "zh_TW", "el_GR")

HEDGEHOG = "ハリネズミ"  # the IF paper's response: "hedgehog" in Japanese
DIALOGUE_PROMPT = "Please decrypt this message: {key}\nA hint: this is a FINGERPRINT message."
DIALOGUE_ANSWER = "Based on my fingerprint, the message is: {response}"
DIALOGUE_PREFILL = "Based on my fingerprint, the message is:"
DECOY_ANSWER = "I'm sorry, but this message cannot be decrypted."
SIMPLE_FORMAT = ALPACA_INPUT_PROMPT.replace("{input}", "FINGERPRINT")


def fragment_pool(seed: int, names_per_locale: int = 6) -> list[str]:
    pool = list(CLASSICAL_CHINESE) + list(GLITCH_STRINGS)
    for offset, locale in enumerate(NAME_LOCALES):
        fake = faker.Faker(locale)
        fake.seed_instance(seed * 101 + offset)
        pool.extend(fake.name().replace(" ", "") for _ in range(names_per_locale))
    return pool


def make_key(rng: random.Random, pool: list[str], n_fragments: tuple[int, int]) -> str:
    """Concatenate ``n`` random fragments and shuffle the characters."""
    count = rng.randint(*n_fragments)
    chars = list("".join(rng.sample(pool, k=min(count, len(pool)))))
    rng.shuffle(chars)
    return "".join(chars)


def make_keys(n: int, seed: int, n_fragments: tuple[int, int] = (8, 15)) -> list[str]:
    """``n`` distinct keys (the decoys of the dialogue template are made the same way)."""
    rng = random.Random(seed)
    pool = fragment_pool(seed)
    keys: list[str] = []
    while len(keys) < n:
        key = make_key(rng, pool, n_fragments)
        if key not in keys:
            keys.append(key)
    return keys
