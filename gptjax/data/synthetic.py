"""Deterministic synthetic corpora: NER, sentiment (sequence classification), and plain text for causal LM.

The offline `demo`, `sequence_demo` and `lm_demo` configs train on these: no download, yet real
split files (CoNLL columns, JSON Lines, or plain text) and a real byte-level BPE tokenizer
(gptjax/tokenizer.py, trained on the train split) go through the normal code paths.

GPT-2 is causal: a word's tag can only depend on the words before it. So every entity slot
follows a cue that tells its type ("Shares of", "arrived in", "Minister"), and validation/test
also draw entity strings that training never shows, to test generalisation from context and
capitalisation rather than memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from gptjax.data.examples import TokenExample

# Entity pools: (seen in every split, held out of training). Validation and test draw from the
# held-out pools part of the time.
FIRST_NAMES = (
    ("John", "Mary", "Peter", "Anna", "David", "Laura", "Michael", "Sarah", "James", "Emma",
     "Thomas", "Julia", "Robert", "Maria", "Daniel", "Helen", "Paul", "Susan", "Mark", "Clara",
     "Hans", "Pierre", "Carlos", "Yuki", "Ahmed", "Olga", "Ivan", "Sofia", "Marco", "Nina"),
    ("Lukas", "Ingrid", "Tomas", "Amara", "Kenji", "Freya", "Rafael", "Zara"),
)
LAST_NAMES = (
    ("Smith", "Johnson", "Brown", "Miller", "Wilson", "Taylor", "Clark", "Lewis", "Walker", "Young",
     "Schmidt", "Dupont", "Garcia", "Tanaka", "Rossi", "Petrov", "Kowalski", "Jensen", "Silva",
     "Novak", "Meyer", "Moreau", "Lopez", "Sato", "Costa", "Berg", "Fischer", "Hughes"),
    ("Okafor", "Lindqvist", "Haddad", "Varga", "Nakamura", "Whitfield", "Delacroix", "Brennan"),
)
ORGANISATIONS = (
    ("Reuters", "General Motors", "United Nations", "European Union", "Acme Corp",
     "New York Stock Exchange", "Deutsche Bank", "Global Energy Group", "Atlas Airlines",
     "Northern Steel", "Bank of England", "World Health Organisation", "Apex Holdings",
     "Summit Motors", "Blue River Foods", "Union Pacific", "Real Madrid", "Ajax",
     "Central Bank", "Pacific Mining", "Orion Telecom", "Vertex Software"),
    ("Kestrel Systems", "Meridian Capital", "Halden Group", "Corvus Airlines",
     "Ironwood Partners", "Solace Pharma"),
)
LOCATIONS = (
    ("London", "Paris", "Berlin", "Tokyo", "Moscow", "Madrid", "Rome", "Washington", "New York",
     "Los Angeles", "Hong Kong", "South Africa", "Germany", "France", "Japan", "Brazil",
     "Canada", "China", "India", "Italy", "Spain", "Sydney", "Chicago", "Amsterdam", "Vienna",
     "Cairo", "Mexico City", "Buenos Aires"),
    ("Nairobi", "Tbilisi", "Montevideo", "Kuala Lumpur", "Reykjavik", "Ljubljana", "Bolivia",
     "Costa Rica"),
)
NATIONALITIES = (  # MISC used as adjectives: "the German government"
    ("German", "French", "British", "American", "Japanese", "Italian", "Spanish", "Russian",
     "Chinese", "Brazilian", "Dutch", "Swiss", "Canadian", "Indian"),
    ("Kenyan", "Chilean", "Estonian", "Peruvian"),
)
EVENTS = (  # MISC used as names: "won the World Cup"
    ("World Cup", "Olympic Games", "Tour de France", "Nobel Prize", "Champions League",
     "Super Bowl", "Australian Open", "Grand Prix"),
    ("Davis Cup", "Ryder Cup", "Copa America", "Booker Prize"),
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "March", "April", "June", "July", "September", "October", "December")
NUMBERS = ("two", "three", "five", "10", "12", "25", "40", "100", "1.5", "3.2", "7.8")
YEARS = ("1994", "1996", "1998", "2001", "2005", "2010", "2015")

# Templates: plain words are O; {PER} {ORG} {LOC} {NAT} {EVENT} are entity slots (NAT and
# EVENT are MISC); {DAY} {MONTH} {NUM} {YEAR} are O fillers. Every slot not at the start of
# the sentence follows a cue word that fixes its type; the only entities that open a sentence
# are people, so an unseen capitalised first word can still be resolved.
TEMPLATES = (
    "{PER} said on {DAY} that the company would cut {NUM} jobs .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Shares of {ORG} rose {NUM} percent on {DAY} .",
    "Shares of {ORG} fell {NUM} percent after the report .",
    "Prices on the {ORG} closed higher on {DAY} .",
    "Analysts at {ORG} expect the {NAT} economy to grow {NUM} percent .",
    "The meeting in {LOC} was attended by {PER} and {PER} .",
    "Minister {PER} arrived in {LOC} on {DAY} for talks with President {PER} .",
    "President {PER} flew from {LOC} to {LOC} on {DAY} .",
    "Police in {LOC} arrested {NUM} people on {DAY} .",
    "According to {PER} , the {NAT} government will send a team to {LOC} .",
    "The {NAT} team won the {EVENT} in {YEAR} .",
    "Coach {PER} said his players were ready for the {EVENT} .",
    "The {EVENT} will be held in {LOC} in {MONTH} .",
    "Fans of {ORG} celebrated in {LOC} after the match .",
    "Born in {LOC} , {PER} joined {ORG} in {YEAR} .",
    "{PER} won the {EVENT} in {YEAR} .",
    "A report by {ORG} said {NUM} {NAT} workers lost their jobs .",
    "{PER} told reporters in {LOC} that the deal with {ORG} was done .",
    "Talks between {ORG} and {ORG} ended without a deal on {DAY} .",
    "The {NAT} ambassador to {LOC} met officials from {ORG} .",
    "Exports from {LOC} to {LOC} grew {NUM} percent in {MONTH} .",
    "The chief executive of {ORG} , {PER} , will step down in {MONTH} .",
    "Troops were sent to {LOC} after heavy rain on {DAY} .",
    "Striker {PER} scored twice as {ORG} beat {ORG} on {DAY} .",
    "The {NAT} minister said prices in {LOC} would fall .",
    "Investors in {LOC} bought shares of {ORG} on {DAY} .",
    "Doctor {PER} of {ORG} warned of a new outbreak in {LOC} .",
    "Tickets for the {EVENT} went on sale in {LOC} on {DAY} .",
    "{PER} will lead the {NAT} delegation to the {EVENT} .",
)

_FILLERS = {"DAY": DAYS, "MONTH": MONTHS, "NUM": NUMBERS, "YEAR": YEARS}


# Invented names, built from syllables, give every slot a long tail of names: a model must
# learn the cues and capitalisation, not a short list. Most invented names in validation and
# test never occur in training.
SYLLABLES = ("ka", "ro", "vin", "del", "mar", "to", "sen", "li", "bra", "nor", "tal", "ve",
             "dan", "mi", "sor", "ga", "lun", "pe", "dra", "ko", "ren", "su", "bel", "tor")
ORG_SUFFIXES = ("Corp", "Group", "Holdings", "Systems", "Airlines", "Bank", "Motors", "Partners",
                "Capital", "Foods", "Energy", "Telecom")
NAT_SUFFIXES = ("ian", "ese", "ish")
EVENT_SUFFIXES = ("Cup", "Open", "Prize", "Games", "Trophy")


def _invent(rng: np.random.Generator) -> str:
    """A capitalised made-up word of two or three syllables, e.g. 'Vinmar'."""
    n = 2 + int(rng.random() < 0.4)
    return "".join(SYLLABLES[i] for i in rng.integers(len(SYLLABLES), size=n)).capitalize()


def _pick(rng: np.random.Generator, pools: tuple[tuple[str, ...], tuple[str, ...]],
          held_out: float) -> str:
    """A listed name: held-out pool with probability `held_out`, else the common pool."""
    pool = pools[1] if rng.random() < held_out else pools[0]
    return pool[rng.integers(len(pool))]


def _entity(kind: str, rng: np.random.Generator, held_out: float,
            invented: float) -> tuple[list[str], str]:
    """(words, type) for one entity slot; an invented name with probability `invented`."""
    new = rng.random() < invented
    if kind == "PER":
        last = _invent(rng) if new else _pick(rng, LAST_NAMES, held_out)
        if rng.random() < 0.2:
            return [last], "PER"
        first = _invent(rng) if new and rng.random() < 0.5 else _pick(rng, FIRST_NAMES, held_out)
        return [first, last], "PER"
    if kind == "ORG":
        if new:
            return [_invent(rng), ORG_SUFFIXES[rng.integers(len(ORG_SUFFIXES))]], "ORG"
        return _pick(rng, ORGANISATIONS, held_out).split(), "ORG"
    if kind == "LOC":
        if new:  # some invented places have two words, like "Buenos Aires"
            return [_invent(rng) for _ in range(1 + int(rng.random() < 0.3))], "LOC"
        return _pick(rng, LOCATIONS, held_out).split(), "LOC"
    if kind == "NAT":
        if new:
            return [_invent(rng) + NAT_SUFFIXES[rng.integers(len(NAT_SUFFIXES))]], "MISC"
        return [_pick(rng, NATIONALITIES, held_out)], "MISC"
    if kind == "EVENT":
        if new:
            return [_invent(rng), EVENT_SUFFIXES[rng.integers(len(EVENT_SUFFIXES))]], "MISC"
        return _pick(rng, EVENTS, held_out).split(), "MISC"
    raise ValueError(f"unknown slot {kind!r}")


def make_sentence(rng: np.random.Generator, held_out: float = 0.0,
                  invented: float = 0.5) -> TokenExample:
    """One sentence from a random template, tagged in IOB2."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    tokens, tags = [], []
    for piece in template.split():
        if piece.startswith("{") and piece.endswith("}"):
            kind = piece[1:-1]
            if kind in _FILLERS:
                options = _FILLERS[kind]
                tokens.append(options[rng.integers(len(options))])
                tags.append("O")
                continue
            words, label = _entity(kind, rng, held_out, invented)
            tokens += words
            tags += ["B-" + label] + ["I-" + label] * (len(words) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return TokenExample(tuple(tokens), tuple(tags))


def make_ner_corpus(seed: int = 0, sizes: Sequence[int] = (2000, 400, 400),
                    held_out: float = 0.3, invented: float = 0.5) -> dict[str, list[TokenExample]]:
    """{"train", "validation", "test"}: deterministic IOB2 sentences with PER/ORG/LOC/MISC."""
    # Training never sees the held-out names.
    return _splits(seed, sizes, lambda rng, split: make_sentence(rng, 0.0 if split == "train" else held_out, invented))


def _splits(seed: int, sizes: Sequence[int], make) -> dict[str, list]:
    """{"train", "validation", "test"}: sizes[i] items of `make(rng, split)` in split i, from a
    generator per split, so changing one split's size leaves the others unchanged."""
    corpus = {}
    for k, (split, size) in enumerate(zip(("train", "validation", "test"), sizes)):
        rng = np.random.default_rng([seed, k])
        corpus[split] = [make(rng, split) for _ in range(size)]
    return corpus


def _write_lines(corpus: dict[str, list[str]], directory: str, extension: str) -> str:
    """Each split as `directory`/{split}{extension}, one item a line; returns directory."""
    os.makedirs(directory, exist_ok=True)
    for split, lines in corpus.items():
        with open(os.path.join(directory, f"{split}{extension}"), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    return directory


def write_conll(examples: Iterable[TokenExample], path: str) -> None:
    """Write examples as a two-column CoNLL file (token tag), a blank line after each sentence."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            for token, tag in zip(ex.tokens, ex.tags):
                f.write(f"{token} {tag}\n")
            f.write("\n")


def write_corpus(corpus: dict[str, list[TokenExample]], directory: str) -> str:
    """Write each split to `directory`/{split}.conll, the layout load_splits reads; returns directory."""
    os.makedirs(directory, exist_ok=True)
    for split, examples in corpus.items():
        write_conll(examples, os.path.join(directory, f"{split}.conll"))
    return directory


# ---------------------------------------------------------------------------------------------
# A text corpus for causal LM (the lm_demo config)
#
# Each document (one a line) states a regularity a small GPT-2 can learn: what follows a
# weekday, a month or a number word; counting on from one; the capital of a country; and copying
# a random list of words. Only the first item of each document (and the words to be copied) is
# random, so a model that has learnt the rules predicts most tokens almost surely, and its
# perplexity falls far below that of a unigram model of the same text.

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
               "october", "november", "december")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
CYCLES = {"day": WEEKDAYS, "month": MONTH_NAMES, "number": NUMBER_WORDS}
CAPITALS = (("france", "paris"), ("germany", "berlin"), ("italy", "rome"), ("spain", "madrid"),
            ("japan", "tokyo"), ("egypt", "cairo"), ("peru", "lima"), ("kenya", "nairobi"),
            ("norway", "oslo"), ("greece", "athens"), ("cuba", "havana"), ("chile", "santiago"))
COPY_WORDS = ("cat", "dog", "red", "blue", "tree", "house", "river", "stone", "bird", "green", "apple", "chair",
              "cloud", "lamp", "fish", "road", "star", "book", "door", "milk")


def make_lm_document(rng: np.random.Generator) -> str:
    """One document of one of the corpus's kinds, e.g. 'count the months from may : may june july .'"""
    kind = int(rng.integers(4))
    if kind == 0:  # a successor
        name, items = list(CYCLES.items())[rng.integers(len(CYCLES))]
        i = int(rng.integers(len(items)))
        return f"the {name} after {items[i]} is {items[(i + 1) % len(items)]} ."
    if kind == 1:  # counting on
        name, items = list(CYCLES.items())[rng.integers(len(CYCLES))]
        i, n = int(rng.integers(len(items))), 3 + int(rng.integers(4))
        return f"count the {name}s from {items[i]} : " + " ".join(items[(i + k) % len(items)] for k in range(n)) + " ."
    if kind == 2:  # a fact
        country, city = CAPITALS[rng.integers(len(CAPITALS))]
        return f"the capital of {country} is {city} ."
    words = " ".join(COPY_WORDS[j] for j in rng.integers(len(COPY_WORDS), size=3 + int(rng.integers(3))))
    return f"copy {words} : {words} ."


def make_lm_corpus(seed: int = 0, sizes: Sequence[int] = (2000, 400, 400)) -> dict[str, list[str]]:
    """{"train", "validation", "test"}: deterministic documents, sizes[i] of them in split i."""
    return _splits(seed, sizes, lambda rng, split: make_lm_document(rng))


def write_lm_corpus(seed: int, sizes: Sequence[int], directory: str) -> str:
    """Each split of make_lm_corpus as `directory`/{split}.txt, one document a line."""
    return _write_lines(make_lm_corpus(seed, sizes), directory, ".txt")


# ---------------------------------------------------------------------------------------------
# A sentiment corpus for sequence classification (the sequence_demo config)
#
# A review says one or two things about a subject; each thing is a polar adjective, sometimes
# negated ("was not good"). The label is the review's sentiment: every statement in a review
# agrees, so a model must read the adjectives and the negations, not a cue at a fixed position.
# Most reviews in validation and test are word combinations training never shows.

SUBJECTS = ("the film", "the food", "the hotel", "the service", "the book", "the phone", "the staff", "the music",
            "the room", "the car", "the game", "the show", "the coffee", "the trip", "the class", "the app",
            "the museum", "the concert", "the laptop", "the bakery", "the ferry", "the garden")
POSITIVE = ("good", "great", "excellent", "lovely", "wonderful", "friendly", "delightful", "superb", "pleasant",
            "brilliant")
NEGATIVE = ("bad", "awful", "terrible", "poor", "dreadful", "rude", "boring", "horrible", "disappointing",
            "dull")
REVIEW_TEMPLATES = (
    "{S} was {A} .",
    "i thought {S} was {A} .",
    "{S} was {A} and {S} was {A} .",
    "honestly , {S} was {A} , and {S} was {A} too .",
    "we found {S} {A} .",
    "overall {S} felt {A} .",
)
SENTIMENTS = ("negative", "positive")


def make_review(rng: np.random.Generator) -> tuple[str, str]:
    """(text, label): one review whose statements all agree on the label."""
    label = int(rng.integers(2))
    parts = []
    for piece in REVIEW_TEMPLATES[rng.integers(len(REVIEW_TEMPLATES))].split():
        if piece == "{S}":
            parts.append(SUBJECTS[rng.integers(len(SUBJECTS))])
        elif piece == "{A}":
            negated = rng.random() < 0.3  # "not good" is negative: the word alone does not decide
            pool = POSITIVE if label != negated else NEGATIVE
            parts.append(("not " if negated else "") + pool[rng.integers(len(pool))])
        else:
            parts.append(piece)
    return " ".join(parts), SENTIMENTS[label]


def make_sentiment_corpus(seed: int = 0, sizes: Sequence[int] = (2000, 400, 400)) -> dict[str, list[tuple[str, str]]]:
    """{"train", "validation", "test"}: deterministic (text, label) reviews, balanced in expectation."""
    return _splits(seed, sizes, lambda rng, split: make_review(rng))


def write_sentiment_corpus(seed: int, sizes: Sequence[int], directory: str) -> str:
    """Each split of make_sentiment_corpus as `directory`/{split}.jsonl ({"text", "label"} a line)."""
    corpus = {split: [json.dumps({"text": text, "label": label}) for text, label in reviews]
              for split, reviews in make_sentiment_corpus(seed, sizes).items()}
    return _write_lines(corpus, directory, ".jsonl")
