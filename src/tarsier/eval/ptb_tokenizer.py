"""Pure-Python stand-in for the Stanford PTBTokenizer that pycocoevalcap runs before CIDEr.

The captioning benchmarks lower-case every caption, hand them to pycocoevalcap's ``PTBTokenizer``
(``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines
-lowerCase`` on a file of one caption per line) and drop its punctuation tokens. CIDEr is very
sensitive to those tokens, so this module reproduces that jar token for token, with no Java.

Stanford's lexer is a JFlex scanner: at each position the rule with the longest match wins (text a
rule only peeks at, its trailing context, counts towards that length), ties go to the earlier rule,
and characters no rule accepts are deleted. ``_RULES`` follows the same scheme. The rules, word
lists and character tables were worked out by probing the jar (every BMP code point in several
contexts, exhaustive strings over small alphabets, random fuzzing); they are our own description
of its behaviour, not its source. ``tests/eval/data/make_ptb_expected.py`` regenerates the data the
tests compare against.

Two entry points: ``tokenize`` treats one caption on its own; ``tokenize_batch`` reproduces what
pycocoevalcap does to a whole list, quirks included: a caption holding a line break the jar
recognises (``\\r``, U+2028, ...) splits into two lines and shifts every later caption by one, a
few rules peek across a caption boundary, and the last caption meets the end of the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["DROPPED", "tokenize", "tokenize_batch"]

# Tokens pycocoevalcap removes after tokenising. It compares case-sensitively after -lowerCase, so
# the bracket tokens (-lrb- ...) survive; that is the reference's behaviour and ours.
DROPPED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Character classes of the jar, as code point ranges of lower-case text (probed; characters whose
# lower case differs never occur, so the ranges run across them). Anything outside these classes
# and the characters named in the rules (most controls, private use, unassigned and all non-BMP
# code points, e.g. emoji) is deleted. Word marks are combining and modifier characters that may
# continue (or start) a plain word but not a hyphenated one.
_LETTERS = (
    "0061-007a 00aa 00b5 00ba 00df-00f6 00f8-02c1 02c6-02d1 02e0-02e4 02ec 02ee 0371-0374 0377 "
    "037a-037d 0390 03ac-03f5 03f8-0481 048b-0527 0559 0561-0587 05d0-05ea 05f0-05f2 0620-064a "
    "066e-066f 0671-06d3 06d5 06e5-06e6 06ee-06ef 06fa-06fc 06ff 0710 0712-072f 074d-07a5 07b1 "
    "07ca-07ea 07f4-07f5 07fa 0800-0815 081a 0824 0828 0840-0858 08a0 08a2-08ac 0904-0939 093d "
    "0950 0958-0961 0971-0977 0979-097f 0985-098c 098f-0990 0993-09a8 09aa-09b0 09b2 09b6-09b9 "
    "09bd 09ce 09dc-09dd 09df-09e1 09f0-09f1 0a05-0a0a 0a0f-0a10 0a13-0a28 0a2a-0a30 0a32-0a33 "
    "0a35-0a36 0a38-0a39 0a59-0a5c 0a5e 0a72-0a74 0a85-0a8d 0a8f-0a91 0a93-0aa8 0aaa-0ab0 "
    "0ab2-0ab3 0ab5-0ab9 0abd 0ad0 0ae0-0ae1 0b05-0b0c 0b0f-0b10 0b13-0b28 0b2a-0b30 0b32-0b33 "
    "0b35-0b39 0b3d 0b5c-0b5d 0b5f-0b61 0b71 0b83 0b85-0b8a 0b8e-0b90 0b92-0b95 0b99-0b9a 0b9c "
    "0b9e-0b9f 0ba3-0ba4 0ba8-0baa 0bae-0bb9 0bd0 0c05-0c0c 0c0e-0c10 0c12-0c28 0c2a-0c33 "
    "0c35-0c39 0c3d 0c58-0c59 0c60-0c61 0c85-0c8c 0c8e-0c90 0c92-0ca8 0caa-0cb3 0cb5-0cb9 0cbd "
    "0cde 0ce0-0ce1 0cf1-0cf2 0d05-0d0c 0d0e-0d10 0d12-0d3a 0d3d 0d4e 0d60-0d61 0d7a-0d7f "
    "0d85-0d96 0d9a-0db1 0db3-0dbb 0dbd 0dc0-0dc6 0e01-0e30 0e32-0e33 0e40-0e46 0e81-0e82 0e84 "
    "0e87-0e88 0e8a 0e8d 0e94-0e97 0e99-0e9f 0ea1-0ea3 0ea5 0ea7 0eaa-0eab 0ead-0eb0 0eb2-0eb3 "
    "0ebd 0ec0-0ec4 0ec6 0edc-0edf 0f00 0f40-0f47 0f49-0f6c 0f88-0f8c 1000-102a 103f 1050-1055 "
    "105a-105d 1061 1065-1066 106e-1070 1075-1081 108e 10d0-10fa 10fc-1248 124a-124d 1250-1256 "
    "1258 125a-125d 1260-1288 128a-128d 1290-12b0 12b2-12b5 12b8-12be 12c0 12c2-12c5 12c8-12d6 "
    "12d8-1310 1312-1315 1318-135a 1380-138f 1401-166c 166f-167f 1681-169a 16a0-16ea 1700-170c "
    "170e-1711 1720-1731 1740-1751 1760-176c 176e-1770 1780-17b3 17d7 17dc 1820-1877 1880-18a8 "
    "18aa 18b0-18f5 1900-191c 1950-196d 1970-1974 1980-19ab 19c1-19c7 1a00-1a16 1a20-1a54 1aa7 "
    "1b05-1b33 1b45-1b4b 1b83-1ba0 1bae-1baf 1bba-1be5 1c00-1c23 1c4d-1c4f 1c5a-1c7d 1ce9-1cec "
    "1cee-1cf1 1cf5-1cf6 1d00-1dbf 1e01-1f15 1f20-1f45 1f50-1f57 1f60-1f7d 1f80-1fb4 1fb6-1fb7 "
    "1fbe 1fc2-1fc4 1fc6-1fc7 1fd0-1fd3 1fd6-1fd7 1fe0-1fe7 1ff2-1ff4 1ff6-1ff7 2071 207f "
    "2090-209c 2102 2107 210a-2113 2115 2119-211d 2124 2128 212c-212d 212f-2139 213c-213f "
    "2145-2149 214e 2184 2c30-2c5e 2c61-2ce4 2cec-2cee 2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f "
    "2d80-2d96 2da0-2da6 2da8-2dae 2db0-2db6 2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 2dd8-2dde "
    "2e2f 3005-3006 3031-3035 303b-303c 3041-3096 309d-309f 30a1-30fa 30fc-30ff 3105-312d "
    "3131-318e 31a0-31ba 31f0-31ff 3400-4db5 4e00-9fcc a000-a48c a4d0-a4fd a500-a60c a610-a61f "
    "a62a-a62b a641-a66e a67f-a697 a6a0-a6e5 a717-a71f a723-a788 a78c-a78e a791-a793 a7a1-a7a9 "
    "a7f8-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3 a8f2-a8f7 a8fb a90a-a925 "
    "a930-a946 a960-a97c a984-a9b2 a9cf aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 aa7a aa80-aaaf "
    "aab1 aab5-aab6 aab9-aabd aac0 aac2 aadb-aadd aae0-aaea aaf2-aaf4 ab01-ab06 ab09-ab0e "
    "ab11-ab16 ab20-ab26 ab28-ab2e abc0-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d fa70-fad9 "
    "fb00-fb06 fb13-fb17 fb1d fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 fb43-fb44 fb46-fbb1 "
    "fbd3-fd3d fd50-fd8f fd92-fdc7 fdf0-fdfb fe70-fe74 fe76-fefc ff41-ff5a ff66-ffbe ffc2-ffc7 "
    "ffca-ffcf ffd2-ffd7 ffda-ffdc"
)
_WORD_MARKS = (
    "00ad 02c2-02c5 02d2-02df 02e5-02eb 02ed 02ef-036f 0375 0378-0379 0384-0385 03f6 0483-0487 "
    "055a-055f 0591-05bd 05bf 05c1-05c2 05c4-05c5 05c7 0615-061a 064b-065e 0670 06d6-06e4 "
    "06e7-06ed 06fd-06fe 070f 0711 0730-074c 07a6-07b0 07eb-07f3 0900-0903 093c 093e-094e "
    "0951-0955 0962-0963 0981-0983 09bc 09be-09c4 09c7-09c8 09cb-09cd 09d7 09e2-09e3 0a01-0a03 "
    "0a3c 0a3e-0a4f 0a81-0a83 0abc 0abe-0acf 0b82 0bbe-0bc2 0bc6-0bc8 0bca-0bcd 0c01-0c03 "
    "0c3e-0c56 0d3e-0d44 0d46-0d48 0e31 0e34-0e3a 0e47-0e4e 0eb1 0eb4-0ebc 0ec8-0ecd"
)
_DIGITS = (
    "0030-0039 0660-0669 06f0-06f9 07c0-07c9 0966-096f 09e6-09ef 0a66-0a6f 0ae6-0aef 0b66-0b6f "
    "0be6-0bef 0c66-0c6f 0ce6-0cef 0d66-0d6f 0e50-0e59 0ed0-0ed9 0f20-0f29 1040-1049 1090-1099 "
    "17e0-17e9 1810-1819 1946-194f 19d0-19d9 1a80-1a89 1a90-1a99 1b50-1b59 1bb0-1bb9 1c40-1c49 "
    "1c50-1c59 a620-a629 a8d0-a8d9 a900-a909 a9d0-a9d9 aa50-aa59 abf0-abf9 ff10-ff19"
)
# Symbols that are always a token of their own.
_SYMBOLS = (
    "0024-0026 003b 003d 005c 005e 007c 007e 00a1 00a5-00a9 00ac 00ae-00b1 00b4 00b6-00b8 "
    "00bf-00d7 00f7 037e 0387 0589 05be 05c0 05c3 05c6 05f3-05f4 0600-0603 0606-060c 0614 061b "
    "061e-061f 066a 066d 06d4 0700-070d 07f6-07f8 0964-0965 0e3f 0e4f 1fbd 2016-2017 2020-2023 "
    "2030-2038 203b 203e-2042 207a-207e 208a-208e 20a4 2100-2101 2103-2106 2108-2109 2114 "
    "2116-2118 211e-2123 2125-2127 2129 212e 213a-213b 2140-2144 214a-214d 214f 2155-215e "
    "2190-2bff 3001-3002 3012 30fb ff01-ff0f ff1a-ff40 ff5b-ff65 ffe0-ffe1 ffe5-ffe6"
)


def _char_class(ranges: str) -> str:
    """The inside of a regex character class for a table of hex code point ranges."""
    parts = []
    for item in ranges.split():
        first, _, last = item.partition("-")
        parts.append(re.escape(chr(int(first, 16))) + (f"-{re.escape(chr(int(last, 16)))}" if last else ""))
    return "".join(parts)


_L, _M, _D = _char_class(_LETTERS), _char_class(_WORD_MARKS), _char_class(_DIGITS)
LET = f"[{_L}]"
ALNUM = f"[{_L}{_D}]"
DIG = f"[{_D}]"
ACCENTED = "&[aeiou](?:acute|grave|uml);"  # SGML letter entities, accepted inside plain words
WORD_CHAR = f"(?:[{_L}{_M}]|{ACCENTED})"
WORD_ALNUM = f"(?:[{_L}{_M}{_D}]|{ACCENTED})"
APOS = "(?:['\u2019\u0092]|&apos;)"  # apostrophes proper
APOS_ANY = "(?:['\u2019\u0092`\u2018\u201b\u0091]|&apos;)"  # ... and the quote marks some rules take
SPACE = "[ \t\u00a0\u2000-\u200a\u3000\u0085\n\r\x0b\x0c\u2028\u2029]"  # white space incl. line breaks
# Never inside a URL or an e-mail address (braces aside in a URL path). U+2028 and friends may be:
# a line break the jar would see there is swallowed by the token.
NOT_URL = " \t\n\f\r\"<>|(){}"

# A plain word: letters, then letters or digits, with single . ! ? inside ("yahoo!answers", "a.b").
WORD = f"{WORD_CHAR}{WORD_ALNUM}*(?:[.!?]{WORD_CHAR}{WORD_ALNUM}*)*"
# Hyphen/underscore compounds of letters and digits; a part may start with d' o' l' ("o'clock").
PART = f"(?:[dol]{APOS_ANY}{ALNUM})?{ALNUM}+"
COMPOUND = f"{PART}(?:[-_]{PART})*"
# ASCII compounds whose first part may hold . and , ("x1,000e-mail", "u.s.-based", "5.-5").
ASCII_COMPOUND = "[a-z0-9][a-z0-9.,\u00ad]*(?:-[a-z0-9\u00ad]+)+"


def _alternatives(words: str) -> str:
    return "|".join(re.escape(w) for w in sorted(words.split(), key=len, reverse=True))


# Abbreviations that keep their period: always; only when two more characters follow (otherwise
# they also end the sentence); only before a number or , : ; ("no. 5", "fig. 3").
ABBREV = _alternatives(
    "cf dr ft lt mr ms mt ph st vs wm adj adm adv ave cie col cpl det drs ens gen gov hon jos maj mfg mme mrs "
    "mtg pfc pvt rep rev sen sfc sgt spc ste alex asst atty brig capt cmdr dept elec govs insp invt mlle msgr "
    "natl pres prof reps sens supt assoc attys comdr lieut profs supts treas messrs"
)
ABBREV_END = _alternatives(
    "al co ct ga jr ky md mo rd rt sq sr va vt ala apr aug bhd cos dak dec esq est etc ext feb fla fri inc ind "
    "jan jul jun kan ltd mar mon neb nev nov oct plc pte pty sep seq sys tel thu tue wed wis wyo ariz assn bldg "
    "blvd bros colo conn corp intl kans mich minn mont okla penn ppte ppty ptes ptys sept tenn tues univ wisc "
    "calif pptes pptys thurs bancorp ph.d ed.d"
)
ABBREV_NUMBER = _alternatives("ca no op pp art fig nos figs prop")
FILE_EXTENSION = _alternatives(
    "c h x gz pl ps py bat bmp cgi cpp dll doc exe gif htm jar jpg mov mp3 pdf php png ppt sql tar txt wav xml zip "
    "docx html java jpeg"
)
URL_PATH = f"/[^{NOT_URL[:-2]}]+[^{NOT_URL}.!?,-]"  # braces may occur inside a path
EMAIL_PART = f"[^{NOT_URL}\u00a0]"
SGML = (
    r"<[a-z][a-z0-9_:.-]*(?: +[a-z][a-z0-9_:.-]*(?: *= *(?:\"[^\"]*\"|'[^']*'))?)* */?>"
    r"|</[a-z][a-z0-9_:.-]* *>|<[!?][a-z-][^>\n]*>"
)

# (pattern, kind) in the jar's priority order. The named group ``tok`` is the token; whatever the
# pattern matches after it is trailing context. \Z alternatives apply only at the end of the file.
_RULES: list[tuple[str, str]] = [
    # Clitics and fused words split off the word before them: "do|n't", "it|'s", "can|not".
    (rf"(?P<tok>[a-z\u00ad]*[a-mo-z]\u00ad*)n{APOS_ANY}t", "word"),
    (rf"(?P<tok>{WORD}){APOS}(?:[msd]|re|ve|ll)", "word"),
    (r"(?P<tok>can)not", "text"),
    (r"(?P<tok>gon|wan)na", "text"),
    (r"(?P<tok>got)ta", "text"),
    (r"(?P<tok>lem|gim)me", "text"),
    (r"(?P<tok>'t)(?:is|was)", "text"),
    (rf"(?P<tok>{WORD})", "word"),
    (rf"(?P<tok>(?:{ABBREV_END})\.)[\s\S]{{2}}", "text"),
    (rf"(?P<tok>(?:{ABBREV_END})\.){SPACE}?\Z", "sentence_end"),
    (rf"(?P<tok>{COMPOUND})", "word"),
    # Slashed ASCII words and numbers, at most three parts ("and/or", "a/b/c", "5\/5").
    (r"(?P<tok>[a-z0-9]+(?:-[a-z]+){0,2}(?:\\?/[a-z0-9]+(?:-[a-z]+){0,2}){0,2})", "word"),
    (
        r"(?P<tok>(?:\([0-9]{2,3}\)[ \u00a0]?|(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])"
        r"[0-9]{3,4}[- \u00a0]?[0-9]{3,5})",
        "phone",
    ),
    (r"(?P<tok>&(?:amp|lt|gt|quot|apos);)", "entity"),
    (r"(?P<tok>&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);)", "text"),
    (r"(?P<tok>(?:\\\*)+)", "text"),
    (rf"(?P<tok>{ASCII_COMPOUND})", "word"),
    (r"(?P<tok>[a-z0-9][a-z0-9.,\u00ad]*(?:-[a-z0-9\u00ad]+)*-[a-z](?:\.[a-z])+\.)", "word"),
    # A word keeps a final period before , ; : ("hello.,").
    (rf"(?P<tok>{WORD}\.)[,;:\u3001]", "word"),
    (rf"(?P<tok>{COMPOUND}\.)[,;:\u3001]", "text"),
    (rf"(?P<tok>{ASCII_COMPOUND}\.)[,;:\u3001]", "word"),
    # Numbers: fractions (spaces become U+00A0), dates, signed numbers with . : , separators.
    (rf"(?P<tok>(?:{DIG}{{1,4}}[- \u00a0])?{DIG}{{1,4}}(?:\\?/|\u2044){DIG}{{1,4}})", "spaced"),
    (rf"(?P<tok>{DIG}{{1,2}}[-/]{DIG}{{1,2}}[-/]{DIG}{{2,4}})", "text"),
    (rf"(?P<tok>[-+]?{DIG}+)", "text"),
    (rf"(?P<tok>[-+]?{DIG}*(?:[.:,\u00ad\u066b\u066c]{DIG}+)+)", "word"),
    # Words with an apostrophe inside or at an end.
    (rf"(?P<tok>{APOS}n{APOS})", "text"),
    (rf"(?P<tok>{APOS}n)(?:[ \t\u00a0\n\r]|\Z)", "text"),
    (rf"(?P<tok>n{APOS_ANY}{LET}{{2,}})", "text"),
    (rf"(?P<tok>{LET}+[aeiouy]{APOS_ANY}[aeiou]{LET}*)", "text"),
    (rf"(?P<tok>[dlj]{APOS})", "text"),
    (rf"(?P<tok>y{APOS}){LET}", "text"),
    (rf"(?P<tok>o{APOS_ANY}o)", "text"),
    (rf"(?P<tok>(?:ol|somethin|dunkin){APOS})", "text"),
    (r"(?P<tok>nat'l|li'l|e'er|ev'ry|s'mores|c'mon|c'est|nor'easter|cont'd\.)", "text"),
    (r"(?P<tok>c#|f#|c\+\+)", "text"),
    (rf"(?P<tok>{APOS}[0-9]{{2}}){SPACE}", "text"),
    (rf"(?P<tok>{APOS}(?:[2-9]0s|em|till?|cause))", "text"),
    # The clitics themselves; after a plain ' only when no ASCII letter follows.
    (r"(?P<tok>'(?:[msd]|re|ve|ll))[^a-z]", "clitic"),
    (r"(?P<tok>'[msd])\Z", "clitic"),
    (r"(?P<tok>(?:[\u2019\u0092]|&apos;)(?:[msd]|re|ve|ll))", "clitic"),
    (rf"(?P<tok>n{APOS_ANY}t)(?:[^a-z]|\Z)", "clitic"),
    # Abbreviations and acronyms that keep their period.
    (rf"(?P<tok>(?:{ABBREV})\.)", "text"),
    (r"(?P<tok>[a-z](?:\.[a-z])+\.?)", "text"),
    (r"(?P<tok>[a-z]\.)", "text"),
    (rf"(?P<tok>(?:{ABBREV_NUMBER})\.)(?:[,:;\u3001]|{SPACE}?{DIG})", "text"),
    # Punctuation.
    (r"(?P<tok>\.\.\.\.?\.?|\u2026|\u0085)", "ellipsis"),
    (r"(?P<tok>---?-?|&(?:mdash|ndash|md);|[\u2013\u2014\u2015\u0096\u0097])", "dash"),
    (r"(?P<tok>-----+)", "text"),
    (r"(?P<tok>[?!]+)", "text"),
    (r"(?P<tok>[(){}\[\]])", "bracket"),
    (r"(?P<tok>\"|''?|[`\u2018\u2019\u201a-\u201f\u0091-\u0094\u00ab\u00bb\u2039\u203a]{1,2})", "quote"),
    (r"(?P<tok>[\u00a2\u00a3\u20ac\u00a4\u20a0\u0080\u00bc\u00bd\u00be\u2153\u2154])", "symbol"),
    (r"(?P<tok>[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+))", "text"),
    (rf"(?P<tok>[{_char_class(_SYMBOLS)}])", "text"),
    (r"(?P<tok>[-.,:/@_#*<>+])", "text"),
    (r"(?P<tok>##+|\*\*+|<<|>>|__+)", "text"),
    (r"(?P<tok>[<>]?[:;=][-o*']?[()dp@|\[\]{\\])[^a-z0-9]", "smiley"),
    (r"(?P<tok>[-^x=<>'~]_[-^x=<>'~])", "text"),
    (r"(?P<tok>\((?:[-x'<=>^~][._]?[-x'<=>^~]|[x'<=>^~]-[x'<=>^~])\))", "smiley"),
    # Twitter names and hash tags, e-mail addresses, file names, URLs, SGML tags.
    (r"(?P<tok>@[a-z_][a-z0-9_]*|@@+)", "text"),
    (
        rf"(?P<tok>(?:<|&lt;)?[a-z0-9]{EMAIL_PART}*@(?:{EMAIL_PART.replace(']', '.]')}+\.)*"
        rf"{EMAIL_PART.replace(']', '.]')}+(?:>|&gt;)?)",
        "longest",
    ),
    (r"(?P<tok>(?:&apos;|[\u2019\u0092])n)", "text"),
    (rf"(?P<tok>#{WORD_CHAR}+)", "text"),
    (rf"(?P<tok>{WORD_ALNUM}+(?:\.{WORD_ALNUM}+)*\.(?:{FILE_EXTENSION}))(?:[.,!?]|{SPACE})", "text"),
    (rf"(?P<tok>https?://[^{NOT_URL}]+[^{NOT_URL}.!?,-])", "text"),
    (
        rf"(?P<tok>(?:www\.(?:[^{NOT_URL}.,!?]+\.)+[a-z]{{2,4}}"
        rf"|(?:[^{NOT_URL}`'.!?,_$0-9:/;=@\[\]\\^-]+\.)+(?:com|net|org|edu))(?:{URL_PATH})?)",
        "longest",
    ),
    (rf"(?P<tok>{SGML})", "spaced"),
    (r"(?P<tok>[ \t\u00a0\u2000-\u200a\u3000]+|&nbsp;)", "space"),
]
_COMPILED = [(re.compile(pattern), kind) for pattern, kind in _RULES]

_NEWLINE = re.compile("\r\n|[\n\r\x0b\x0c\u2028\u2029]")  # the line breaks -preserveLines keeps
_SPACES = re.compile("[ \t\u00a0\u2000-\u200a\u3000]+")
_URL_END = re.compile("[ \t\n\f\r]|$")
_PLAIN_WORD = re.compile("[a-z]+(?=[ \n])")  # fast path: no rule can do better (see _lex)
_FUSED = frozenset(["cannot", "gonna", "gotta", "wanna", "lemme", "gimme"])

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_QUOTES = str.maketrans(
    {'"': "''", "\u201c": "``", "\u201d": "''", "\u2018": "`", "\u2019": "'", "\u00ab": "``", "\u00bb": "''",
     "\u2039": "`", "\u203a": "'", "\u0091": "`", "\u0092": "'", "\u0093": "``", "\u0094": "''", "\u201b": "`"}
)
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": "''", "&apos;": "'"}
_SYMBOL_NAMES = {
    "\u00a2": "cents", "\u00a3": "#", "\u20ac": "$", "\u00a4": "$", "\u20a0": "$", "\u0080": "$",
    "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3",
}


# What the jar prints for a token of each kind (before -lowerCase). Kinds not listed print as they
# are; "longest" also marks the rules whose longest match needs a search (see _longest).
_PRINTED: dict[str, Callable[[str], str]] = {
    "word": lambda t: t.replace("\u00ad", "") or "-",  # soft hyphens vanish; a lone one prints as "-"
    "spaced": lambda t: t.replace(" ", "\u00a0"),
    "phone": lambda t: t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"),
    "smiley": lambda t: t.replace("(", "-LRB-").replace(")", "-RRB-"),
    "clitic": lambda t: t.replace("&apos;", "'").translate(_QUOTES),
    "quote": lambda t: t.translate(_QUOTES),
    "bracket": _BRACKETS.__getitem__,
    "entity": _ENTITIES.__getitem__,
    "symbol": _SYMBOL_NAMES.__getitem__,
    "ellipsis": lambda t: "...",
    "dash": lambda t: "--",
}


def _longest(rx: re.Pattern[str], text: str, start: int, match: re.Match[str]) -> re.Match[str]:
    """The longest match of ``rx`` at ``start``, as a JFlex DFA finds it (re stops at the first)."""
    for end in range(_URL_END.search(text, start).start(), match.end(), -1):
        longer = rx.fullmatch(text, start, end)
        if longer:
            return longer
    return match


def _lex(text: str) -> list[list[str]]:
    """Raw tokens per line of a lower-cased file, as the jar prints them."""
    lines: list[list[str]] = [[]]
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i = _SPACES.match(text, i).end()
            continue
        newline = _NEWLINE.match(text, i)
        if newline:
            lines.append([])
            i = newline.end()
            continue
        word = _PLAIN_WORD.match(text, i)
        if word and word.group() not in _FUSED:
            # Letters then a space or newline: every rule that could start here ends within the
            # letters, so the plain word wins.
            lines[-1].append(word.group())
            i = word.end()
            continue
        best: tuple[re.Match[str], str] | None = None
        for rx, kind in _COMPILED:
            match = rx.match(text, i)
            if match and kind == "longest":
                match = _longest(rx, text, i, match)
            if match and (best is None or match.end() > best[0].end()):
                best = (match, kind)
        if best is None:  # untokenisable: deleted
            i += 1
            continue
        match, kind = best
        token = match.group("tok")
        i += len(token)
        if kind == "space":
            continue
        printed = _PRINTED.get(kind)
        lines[-1].append((printed(token) if printed else token).lower())
        if kind == "sentence_end":
            lines[-1].append(".")
    return lines


def _drop_punctuation(tokens: list[str]) -> str:
    """pycocoevalcap's post-processing of one output line."""
    return " ".join(w for w in " ".join(tokens).rstrip().split(" ") if w not in DROPPED)


def tokenize(caption: str) -> str:
    """Tokens of one caption, lower-cased, punctuation dropped, joined by spaces.

    The caption is treated on its own, as if followed by another caption: line breaks inside it
    are plain white space and nothing depends on its neighbours.
    """
    return _drop_punctuation(_lex(_NEWLINE.sub(" ", caption.lower()) + "\n\n")[0])


def tokenize_batch(captions: Sequence[str]) -> list[str]:
    """What pycocoevalcap's PTBTokenizer returns for these captions, one string per caption.

    The captions are joined into one file exactly as pycocoevalcap does, so a caption holding a
    line break shifts every later caption by one line (the last lines fall off), rules may look
    into the next caption, and the last caption is at the end of the file.
    """
    text = "\n".join(c.lower().replace("\n", " ") for c in captions)
    lines = _lex(text)
    lines += [[]] * (len(captions) - len(lines))
    return [_drop_punctuation(tokens) for tokens in lines[: len(captions)]]
