"""The saved reward model's tokenizer encodes what rlhfkit scores.

`set_scoring_template` gives the tokenizer a `tokenizers` post-processor, so that plain
transformers (`tok(prompt + response)`, `pipeline("text-classification")`) adds the BOS
and EOS rlhfkit scores with and scores a response as `rlhfkit score` does.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers import processors

from rlhfkit.data.tokenize import resolve_bos

log = logging.getLogger("rlhfkit")


def set_scoring_template(tokenizer: Any) -> bool:
    """Make `tokenizer`'s own default encoding add the specials rlhfkit scores with (in
    place; saved with it, as the post-processor in tokenizer.json). True if a probe agrees.

    rlhfkit scores `[bos?] + prompt + response + [eos]` (`data.reward_data.encode_responses`;
    BOS by `resolve_bos`: none where BOS is EOS, as in GPT-2), prompt and response tokenized
    apart. With this template, `tok(prompt, response)` gives exactly those ids, and
    `tok(prompt + response)` (what `pipeline("text-classification")` does with one text)
    gives them wherever tokenizing the joined text changes nothing at the seam (a prompt
    ending in a space, or mid-word, is where it may). Plain transformers then scores what
    rlhfkit scores, not the sequence without BOS and EOS. Caveats: rlhfkit keeps the last
    --max-len tokens of a longer sequence (transformers does not cut); a response whose text
    ends in the EOS token's text gets it once from rlhfkit, twice here; a chat record's BOS
    comes from its chat template, so encode the rendered conversation without specials and
    add EOS. An RM in chat format (`data.chat`: rlhfkit_chat true in its tokenizer_config.json)
    scores even a plain prompt as a chat: render [user prompt, assistant response] with
    `apply_chat_template(..., tokenize=False)`, keep the text up to the assistant turn's EOS
    (the end of turn; what the template writes after it is not scored) and encode that
    without specials. A tokenizer without a `tokenizers` backend keeps its encoding, with a
    warning.
    """
    bos = resolve_bos(tokenizer)
    head = [bos] if bos is not None else []  # ids
    eos = tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and eos is not None:
        first = [tokenizer.convert_ids_to_tokens(bos)] if bos is not None else []  # texts
        last = tokenizer.convert_ids_to_tokens(eos)
        backend.post_processor = processors.TemplateProcessing(
            single=[*first, "$A", last],
            pair=[*first, "$A", "$B:0", last],  # one sequence: no second BOS
            special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in {*first, last}],
        )
    # The probe: what transformers' default encoding now gives, against rlhfkit's ids.
    a, b = tokenizer(["Hello", " world"], add_special_tokens=False)["input_ids"]
    ok = (
        eos is not None
        and tokenizer("Hello")["input_ids"] == head + a + [eos]
        and tokenizer("Hello", " world")["input_ids"] == head + a + b + [eos]
    )
    if not ok:
        log.warning(
            "%s: its default encoding does not add the BOS/EOS rlhfkit scores with: plain "
            "transformers (tok(text), pipeline) scores of this reward model will differ",
            type(tokenizer).__name__,
        )
    return ok
