"""Regenerate the expected data for tests/eval/test_eval_cider_tokenizer.py from the real reference.

Run from the repository root (needs Java and pycocoevalcap, which ships the Stanford jar)::

    python tests/eval/data/make_ptb_expected.py

It writes, next to this file:

* ``ptb_adversarial.json``: adversarial captions and the tokens pycocoevalcap's ``PTBTokenizer``
  (Stanford PTBTokenizer 3.4.1, ``-preserveLines -lowerCase``, then its punctuation drop list) gives
  for each, after the ``.lower()`` Tarsier's benchmark applies first. A filler caption sits between
  any two captions so that none is at the end of the file or looks ahead into the next one.
* ``ptb_realistic.json``: a seeded, MSVD-like caption set (references and a prediction per video)
  and the CIDEr pycocoevalcap reports for it, computed exactly as the benchmark does: lower-case,
  ``PTBTokenizer`` on all references, then on all predictions, then ``Cider().compute_score``.
* ``ptb_batches.json``: small batches whose result depends on the whole file (a caption holding a
  line separator such as ``\\r`` or U+2028 shifts every later caption; rules that look into the next
  caption; the end of the file), the tokens the reference gives each caption slot, and a CIDEr
  case with the line shift.

The output is deterministic: everything random is drawn from fixed seeds.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILLER = "x"

# ---------------------------------------------------------------------------------------------
# Adversarial captions: one phenomenon or a few per caption.
ADVERSARIAL_FIXED = [
    # contractions and clitics
    "It's a dog's life, isn't it?",
    "He can't stop; she won't go and they don't care.",
    "I'm sure you're right, we've seen they'll come and she'd've known.",
    "The man cannot swim, he's gonna drown, gotta help, wanna try, lemme see, gimme that!",
    "'Tis the season, 'twas the night; y'all know it's 10 o'clock.",
    "Ma'am, rock 'n' roll is back in the '90s and '80s; 'em all.",
    "The dogs' toys and James' car are in the Smiths' yard.",
    "Ain't nobody shan't mayn't needn't mustn't.",
    "O'Neil met D'Angelo at L'Oreal near O'Hare.",
    "ne'er-do-well li'l nat'l c'mon s'mores e'er ev'ry nor'easter cont'd. ol' somethin' dunkin'",
    "it’s a cat’s toy, don’t touch; isn’t it great?",
    "it`s don`t isn‘t it‘s ‘tis ’tis",
    "y'know he'd he'll we'd we're they've",
    "the kid's kid's' toy, the boss's boss' office",
    "'cause 'til 'till 'bout 'round 'nuff 'kay",
    "don'ts and do's, it'sx isn'tx",
    # abbreviations
    "Mr. Smith and Mrs. Jones met Dr. Who at St. Paul's, etc.",
    "The U.S. army, the U.K. team, e.g. a Ph.D. student, i.e. a.m. and p.m. times.",
    "Co. Inc. Corp. Ltd. Jr. Sr. vs. Prof. Gen. Sgt. Capt. Rev.",
    "See fig. 3 and no. 5, ca. 1990, pp. 10, art. 2; no. , fig.",
    "Jan. Feb. Mar. Apr. Aug. Sept. Oct. Nov. Dec. Mon. Tue. Wed. Thu. Fri.",
    "Calif. Ariz. Mass. Wash. Penn. Tenn. Mich. Minn. Fla.",
    "the inc.x and etc.y and mr.x and u.s.-based firm",
    "a. b. c. x.y. a.b.c.d. a.k.a. ed.d.",
    "He lives in the U.S.",
    "etc.  Then more.",
    "mr.  smith",
    # numbers
    "3.5 km, 1,000 people, $5, 50%, 10:30, -5 degrees, +3 points",
    "It costs $5.00 or £4 or €3.50 or ¥500 or 5¢, about US$5.",
    "3 1/2 cups, 1/2 cup, ½ cup, ¼ inch, ¾ full, ⅓ and ⅔",
    "Call (555) 555-1234 or 555 555 5555 or 555-555-5555 now.",
    "On 12/25/2010 and 2010-12-25 and 12-25-2010 at 10:30:45.",
    "1st 2nd 3rd 4th 21st 100th 3d 4x4 mp3 b2b",
    "the 1990s and '90s, 1980's, the 20-year-old, 3-d, 3-in-1",
    "x² + y² = z², H₂O, 10⁶",
    "5.5.5 1.2.3.4 .5 5. 5.0. 0.5% -.5",
    "number 5,000,000 and 5,00 and 5,5555",
    # brackets
    "A man (wearing a hat) plays [guitar] {loudly} <br> here.",
    "((nested)) [[double]] {{curly}} (a[b]c) <x>",
    ":) :-) ;) :( :-( :D :P :-P =) <3 ^_^ -_- o_o",
    # quotes
    'He said "hello" and she said \'bye\'.',
    "“Smart quotes” and ‘single smart’ and «guillemets» and ‹single›.",
    "„low“ and ‚low‘ and ‟reversed” quotes",
    "``latex quotes'' and `single'",
    "““double-double”” ‘‘x’’",
    '"" \'\' "a" \'b\'',
    # ellipses, dashes, repeated punctuation
    "Wait... what?! No!! Really??? Yes!?",
    "Well…… okay. . . fine.... sure..... right......",
    "a man -- a woman — a child – a dog ― a cat",
    "high-five, x-ray, e-mail, co-op, twenty-one, mother-in-law, state-of-the-art",
    "-- --- ---- ----- ------ - ‐ ‑ − ",
    "a--b a---b a-b- -a-b -- a -",
    "!!! ??? !?! ?!? ... ;; :: ,, ..",
    "The end.",
    "no punctuation at all",
    # slashes, ampersands, symbols
    "and/or his/her 1/2/3 a/b/c/d km/h 24/7",
    "AT&T, R&D, Q&A, rock & roll, &amp; &lt;tag&gt; &quot;quoted&quot; caf&eacute; a&nbsp;b",
    "@user #hashtag #1 c# f# c++ 100% * ** *** + ++ = == ~ ^ | \\ _ __",
    "a_b snake_case CamelCase x86-64 utf-8 base64",
    "§ © ® ™ ° ± × ÷ µ ¶ • † ‡ ‰ ′ ″",
    # URLs and emails
    "Visit http://www.example.com/path?x=1&y=2 or https://youtu.be/abc123.",
    "Go to www.example.com or example.com or example.org/page.",
    "Mail john.doe@example.com or <jane@example.org> today.",
    "file.txt image.jpg video.mp4 script.py index.html archive.tar.gz",
    # non-ASCII letters and scripts, emoji
    "The café serves crème brûlée and jalapeño piñatas; naïve façade.",
    "Straße, Łódź, Ærø, İstanbul, ΣΟΦΙΑ, Ελληνικά, русский текст",
    "中文字幕 日本語 한국어 العربية हिन्दी ภาษาไทย",
    "a dog 🐶 runs 🏃‍♂️ fast 🔥🔥 lol 😂",
    "ﬁne ﬂower ﬀ",
    "zero\u200bwidth joiner\u200dnon\u200cjoiner soft\u00adhyphen",
    # white space
    "tabs\tbetween\twords",
    "multiple     spaces   here",
    "   leading and trailing spaces   ",
    "non\u00a0breaking\u00a0space and thin\u2009space and ideographic\u3000space",
    "",
    " ",
    ".",
    "!",
    "...",
    "-",
    "'",
    '"',
    # SGML-ish
    "<b>bold</b> <br/> <a href=\"x\">link</a> <img src='x.png'/> <!-- c -->",
    "a < b > c <= d >= e << f >> g <> h",
]

# Pieces glued together to make more adversarial captions.
PIECES = (
    "man dog it can cannot gonna don do n't 's 'll 're o'clock y'all 'tis ma'am '90s "
    "5 3.5 1,000 10:30 1/2 555-1234 2010 -5 20-year-old x-ray and/or "
    "$ % & # @ * + = / \\ ~ ^ _ < > £ € ¢ ° © "
    ". , ; : ! ? ... .. -- - — – … ' \" ` ‘ ’ “ ” « » „ !! ?! "
    "( ) [ ] { } <b> &amp; &quot; &lt; "
    "http://x.com www.x.com x.com a@b.com @user #tag "
    "é ü ñ café naïve 中文 α ß "
    "mr etc u.s e.g i.e a.m no fig ca vs st inc jan ph.d a i x"
).split(" ")


def adversarial_captions() -> list[str]:
    """The fixed captions, each piece in a sentence, a few upper-cased, and random glued pieces."""
    rng = random.Random(20240601)
    in_context = [f"A man{' ' if i % 2 else ''}{piece}{' ' if i % 3 else ''}the dog." for i, piece in enumerate(PIECES)]
    cased = [c.upper() for c in ADVERSARIAL_FIXED[:60:6]]
    glued = []
    for _ in range(150):
        parts = []
        for _ in range(rng.randint(2, 9)):
            parts.append(rng.choice(PIECES))
            if rng.random() < 0.6:
                parts.append(rng.choice([" ", " ", " ", "  ", "\t"]))
        glued.append("".join(parts))
    return ADVERSARIAL_FIXED + in_context + cased + glued


# ---------------------------------------------------------------------------------------------
# Realistic MSVD-like captions: paraphrased references, a prediction that is sometimes wrong.
SUBJECTS = {
    "man": ["a man", "a guy", "the man", "a person", "someone", "a young man"],
    "woman": ["a woman", "a lady", "the woman", "a girl", "someone", "a person"],
    "men": ["two men", "some men", "people", "a group of people", "two guys"],
    "dog": ["a dog", "the dog", "a puppy", "a small dog"],
    "cat": ["a cat", "the cat", "a kitten"],
    "child": ["a child", "a kid", "a boy", "a little girl", "the baby"],
}
EVENTS = [
    ("man", ["playing a guitar", "strumming a guitar", "playing the guitar", "performing on a guitar"]),
    ("woman", ["slicing an onion", "cutting an onion", "chopping onions", "slicing onions with a knife"]),
    ("man", ["riding a bike", "riding a bicycle", "cycling down a road", "biking"]),
    ("woman", ["cooking noodles", "frying noodles in a pan", "making noodles", "cooking"]),
    ("dog", ["running on the beach", "running in the sand", "playing on the beach", "running"]),
    ("men", ["dancing on a stage", "dancing", "performing a dance", "dancing together"]),
    ("child", ["swimming in a pool", "swimming", "playing in the water", "splashing in a pool"]),
    ("woman", ["playing the piano", "playing a keyboard", "playing piano", "performing on a piano"]),
    ("man", ["cutting a tomato", "slicing a tomato", "chopping tomatoes", "cutting tomatoes with a knife"]),
    ("man", ["driving a car", "driving down a road", "steering a car", "racing a car"]),
    ("cat", ["eating food", "eating from a bowl", "drinking milk", "licking a plate"]),
    ("woman", ["singing a song", "singing", "singing into a microphone", "performing a song"]),
    ("dog", ["playing with a ball", "chasing a ball", "catching a ball", "fetching a ball"]),
    ("woman", ["mixing flour in a bowl", "mixing batter", "stirring a bowl of dough", "whisking eggs"]),
    ("child", ["jumping on a trampoline", "bouncing on a trampoline", "jumping", "playing on a trampoline"]),
    ("man", ["peeling a potato", "peeling potatoes", "skinning a potato", "peeling a vegetable"]),
    ("woman", ["talking on the phone", "making a phone call", "talking on a cellphone", "chatting on a phone"]),
    ("men", ["walking down the street", "walking on a sidewalk", "crossing a street", "walking"]),
    ("man", ["pouring water into a glass", "pouring water", "filling a glass with water", "pouring a drink"]),
    ("cat", ["climbing a tree", "sitting in a tree", "jumping on a branch", "climbing"]),
    ("man", ["typing on a laptop", "using a computer", "typing on a keyboard", "working on a laptop"]),
    ("child", ["skating in the park", "riding a skateboard", "skateboarding", "roller skating"]),
    ("woman", ["frying an egg", "cooking an egg", "frying eggs in a pan", "making an omelette"]),
    ("men", ["playing soccer", "playing football", "kicking a soccer ball", "playing a soccer game"]),
    ("dog", ["barking at a cat", "barking", "growling at a cat", "chasing a cat"]),
]
PLACES = ["", "", "", "", " in the kitchen", " outside", " on the street", " at night", " in slow motion", " at home"]
TEMPLATES = [
    "{s} {v} {a}{p}.", "{s} {v} {a}{p}.", "{s} {v} {a}{p}", "{S} {v} {a}{p}.", "{S} {v} {a}{p}!",
    "{S} {v} {a}{p} ...", "{S}'s {a}{p}.", "{S}’s {a}{p}.", "{S} {v}n't just standing, {s} {v} {a}{p}.",
    "{S} {v} {a} (again){p}.", "{S} {v} \"{a}\"{p}.", "“{S} {v} {a}{p}”", "{S} {v} {a}{p} -- really well.",
    "{S} {v} {a}{p}; it's fun.", "{S} {v} {a}{p}, e.g. for 3.5 min.", "{S} {v} {a}{p} for $5, 50% off.",
    "{S} {v} {a}{p} at 10:30 a.m.", "{S} {v} {a}{p} with 1,000 fans.", "{S} {v} {a}{p} — twice…",
    "{S} {v} {a}{p} in the U.S.", "{s}  {v}\t{a}{p}", "{S} {v} {a}{p} (see fig. 2).", "{S} {v} {a}{p}?!",
    "{S} {v} {a}{p}: a 20-year-old's video.", "{S} {v} {a}{p} [HD]", "{S} {v} {a}{p} & smiles.",
    "Mr. Smith {v} {a}{p}.", "{S} {v} {a}{p} -- it's 3 o'clock.", "{S} {v} {a}{p} & can't stop!",
]


def _caption(rng: random.Random, kind: str, action: str) -> str:
    s = rng.choice(SUBJECTS[kind])
    v = "are" if kind == "men" else "is"
    text = rng.choice(TEMPLATES).format(s=s, S=s[0].upper() + s[1:], v=v, a=action, p=rng.choice(PLACES))
    return text.upper() if rng.random() < 0.05 else text


def realistic_set() -> list[dict[str, object]]:
    rng = random.Random(1234)
    videos = []
    for _ in range(100):
        kind, actions = rng.choice(EVENTS)
        refs = [_caption(rng, kind, rng.choice(actions)) for _ in range(5)]
        if rng.random() < 0.3:  # a wrong prediction
            kind, actions = rng.choice(EVENTS)
        videos.append({"references": refs, "prediction": _caption(rng, kind, rng.choice(actions))})
    return videos


# ---------------------------------------------------------------------------------------------
# Batches where the reference's result depends on the whole file, not just on each caption.
BATCHES = {
    # Java also ends lines at \r, U+2028, U+2029, \x0b and \x0c: later captions shift down.
    "line_shift": [
        "a man is singing.",
        "a woman\ris dancing.",
        "two dogs play\u2028in the yard.",
        "a cat sleeps.",
        "a car\u2029drives\x0bfast\x0cnow.",
        "a child laughs.",
        "the end\r",
        "the very end.",
    ],
    # A few rules look past the end of the line: "fig." keeps its period before a number.
    "lookahead": ["see fig.", "5 dogs run", "it is no.", "1 again", "no.", "x"],
    # The last caption meets the end of the file, where some lookaheads fail.
    "end_of_file_smiley": ["a man", "a cat smiles :)"],
    "end_of_file_clitic": ["a man", "he said we'll"],
    "end_of_file_abbreviation": ["a man", "cats, dogs, etc."],
}
# A CIDEr case for the line shift: the second reference of video 0 pushes every later reference
# one video down, and the video's own reference is cut short.
LINE_SHIFT_VIDEOS = [
    {"references": ["a man plays a guitar.", "a man\rstrums a guitar"], "prediction": "a man plays a guitar"},
    {"references": ["a woman slices an onion.", "a lady cuts onions"], "prediction": "a woman cuts an onion"},
    {"references": ["two dogs run on the beach"], "prediction": "two dogs run"},
]


def reference_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on the lower-cased captions, one call for the whole list."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({i: [{"caption": c.lower()}] for i, c in enumerate(captions)})
    return [tokenized[i][0] for i in range(len(captions))]


def reference_cider(videos: list[dict[str, object]]) -> tuple[float, list[float]]:
    """CIDEr as the reference repository computes it (its evaluation/metrics/evaluate_caption_cider.py)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    references = {i: [{"caption": r.lower()} for r in v["references"]] for i, v in enumerate(videos)}
    predictions = {i: [{"caption": v["prediction"].lower()}] for i, v in enumerate(videos)}
    score, scores = Cider().compute_score(tokenizer.tokenize(references), tokenizer.tokenize(predictions))
    return float(score), [float(s) for s in scores]


def main() -> None:
    captions = adversarial_captions()
    padded = list(itertools.chain.from_iterable((c, FILLER) for c in captions))
    tokens = reference_tokenize(padded)[::2]
    _write("ptb_adversarial.json", [{"caption": c, "tokens": t} for c, t in zip(captions, tokens)])

    videos = realistic_set()
    score, scores = reference_cider(videos)
    _write("ptb_realistic.json", {"cider": score, "per_video": scores, "videos": videos})

    batches = {name: {"captions": c, "tokens": reference_tokenize(c)} for name, c in BATCHES.items()}
    score, scores = reference_cider(LINE_SHIFT_VIDEOS)
    line_shift_cider = {"cider": score, "per_video": scores, "videos": LINE_SHIFT_VIDEOS}
    _write("ptb_batches.json", {"batches": batches, "line_shift_cider": line_shift_cider})


def _write(name: str, data: object) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=1)
    for separator in ("\u0085", "\u2028", "\u2029"):  # keep the files' own lines intact
        text = text.replace(separator, f"\\u{ord(separator):04x}")
    path = HERE / name
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
