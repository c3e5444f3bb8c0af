"""The judge prompts (our own wording) and loading replacements for them from a file.

AutoDQ and open-ended QA scores depend on the judge and on how it is asked, so the prompts are
named, hashed into every result file, and replaceable without touching code: a YAML (or JSON) file
maps a prompt name to a user message, or to ``{system: ..., user: ...}``. Placeholders are written
``{name}``; other braces (JSON examples) need no escaping.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from tarsier.config_files import read_yaml_mapping
from tarsier.errors import TarsierError


@dataclass(frozen=True)
class Prompt:
    """A chat prompt with ``{placeholder}`` slots; rendering gives the messages sent to the judge."""

    name: str
    user: str
    system: str | None = None
    placeholders: tuple[str, ...] = ()

    def render(self, **values: str) -> list[dict[str, str]]:
        missing = set(self.placeholders) - set(values)
        if missing:
            raise ValueError(f"prompt {self.name} needs values for {sorted(missing)}")
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.placeholders)) + r")\}")

        def fill(template: str) -> str:
            return pattern.sub(lambda m: values[m.group(1)], template) if self.placeholders else template

        messages = []
        if self.system:
            messages.append({"role": "system", "content": fill(self.system)})
        messages.append({"role": "user", "content": fill(self.user)})
        return messages

    @property
    def digest(self) -> str:
        """Short hash of the wording, stored with results so a changed prompt is visible."""
        blob = json.dumps([self.system, self.user], ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


EXTRACT_EVENTS = Prompt(
    name="extract_events",
    placeholders=("description",),
    user="""You will read a description of a video clip and list the actions that happen in it.

Description:
{description}

List at most 10 events from this description, following these rules:
1. An event is something that moves or changes: an action, a motion or a movement. Static facts (how things look, where they are, what someone wears) are not events.
2. Each event is atomic: one subject doing one thing. Split compound actions into separate events.
3. Write each event as one short sentence of at most 10 words, with a subject, a verb and, if needed, an object. Leave out appearance details.
4. Replace pronouns with the nouns they stand for.
5. Cuts between shots and movements of the camera are not events.
6. Do not list the same event twice.

Answer with a JSON object and nothing else, shaped like this:
{"events": ["first event", "second event"]}
If the description contains no events, answer {"events": []}.""",
)

ENTAILMENT = Prompt(
    name="entailment",
    placeholders=("description", "events"),
    user="""Below are a description of a video and a numbered list of events. For every event, decide how the description relates to it:
- "entailment": the description states or clearly implies that the event happens.
- "contradiction": some detail of the description conflicts with the event.
- "neutral": neither of the two; the description does not settle whether the event happens.

Description:
{description}

Events:
{events}

Answer with a JSON object and nothing else, with one entry per event, in the order of the list:
{"events": [{"event": "the event, copied", "relationship": "entailment, neutral or contradiction", "reason": "a short justification"}]}""",
)

OPEN_QA = Prompt(
    name="open_qa",
    placeholders=("question", "answer", "prediction"),
    system=(
        "You check answers to questions about videos. You compare a predicted answer with the correct "
        "answer and decide whether they mean the same thing. Synonyms and paraphrases count as a match: "
        "judge the meaning, not the wording."
    ),
    user="""Question: {question}
Correct answer: {answer}
Predicted answer: {prediction}

Does the predicted answer match the correct answer? Answer with a JSON object and nothing else, holding "pred" ("yes" or "no") and "score" (an integer from 0 to 5, where 5 means the meanings match perfectly). For example:
{"pred": "no", "score": 1}""",
)

DEFAULT_PROMPTS: dict[str, Prompt] = {p.name: p for p in (EXTRACT_EVENTS, ENTAILMENT, OPEN_QA)}


def load_prompts(path: str | Path | None) -> dict[str, Prompt]:
    """The default prompts, with those named in ``path`` (YAML or JSON) replaced."""
    prompts = dict(DEFAULT_PROMPTS)
    if path is None:
        return prompts
    path = Path(path)
    data = read_yaml_mapping(path, f"of prompt names ({', '.join(prompts)}) to prompts")
    for name, value in data.items():
        if name not in prompts:
            raise TarsierError(f"{path}: unknown prompt {name!r}; known: {', '.join(prompts)}")
        if isinstance(value, str):
            system, user = None, value
        elif isinstance(value, dict) and isinstance(value.get("user"), str) and set(value) <= {"system", "user"}:
            system, user = value.get("system"), value["user"]
            if system is not None and not isinstance(system, str):
                raise TarsierError(f"{path}: prompt {name!r}: 'system' must be a string")
        else:
            raise TarsierError(f"{path}: prompt {name!r} must be a string or a mapping with 'user' (and 'system')")
        default = prompts[name]
        text = (system or "") + user
        for placeholder in default.placeholders:
            if "{" + placeholder + "}" not in text:
                raise TarsierError(f"{path}: prompt {name!r} lacks the placeholder {{{placeholder}}}")
        prompts[name] = replace(default, user=user, system=system)
    return prompts
