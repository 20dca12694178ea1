"""Parallel multilingual sentences from phrase tables (subject x predicate x time phrase).

Every language has the same phrases in the same order, so sentence ``(s, p, a)`` in German is
the translation of sentence ``(s, p, a)`` in English: one table gives ASR text in seven
languages and translation pairs between them (12 x 16 x 10 = 1920 sentences per language).
Word order per language: subject, verb, object, time (``svoa``) or subject, verb, time,
object (``svao``, German and Dutch, where a time phrase before the object reads naturally).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SUBJECTS: dict[str, tuple[str, ...]] = {
    "en": ("my brother", "the old man", "our teacher", "the little girl", "a young doctor",
           "the neighbour", "my sister", "the farmer", "your friend", "the new student",
           "our grandmother", "the baker"),
    "de": ("mein Bruder", "der alte Mann", "unser Lehrer", "das kleine Mädchen",
           "ein junger Arzt", "der Nachbar", "meine Schwester", "der Bauer", "dein Freund",
           "der neue Student", "unsere Großmutter", "der Bäcker"),
    "fr": ("mon frère", "le vieil homme", "notre professeur", "la petite fille",
           "un jeune médecin", "le voisin", "ma sœur", "le fermier", "ton ami",
           "le nouvel étudiant", "notre grand-mère", "le boulanger"),
    "es": ("mi hermano", "el anciano", "nuestro profesor", "la niña pequeña", "un médico joven",
           "el vecino", "mi hermana", "el granjero", "tu amigo", "el nuevo estudiante",
           "nuestra abuela", "el panadero"),
    "it": ("mio fratello", "il vecchio", "il nostro insegnante", "la bambina",
           "un giovane medico", "il vicino", "mia sorella", "il contadino", "il tuo amico",
           "il nuovo studente", "nostra nonna", "il fornaio"),
    "pt": ("o meu irmão", "o velho", "o nosso professor", "a menina", "um jovem médico",
           "o vizinho", "a minha irmã", "o agricultor", "o teu amigo", "o novo estudante",
           "a nossa avó", "o padeiro"),
    "nl": ("mijn broer", "de oude man", "onze leraar", "het kleine meisje", "een jonge dokter",
           "de buurman", "mijn zus", "de boer", "jouw vriend", "de nieuwe student", "onze oma",
           "de bakker"),
}

PREDICATES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("drinks", "a cup of tea"), ("reads", "the newspaper"), ("walks", "to the station"),
           ("plays", "the piano"), ("cooks", "dinner"), ("writes", "a long letter"),
           ("buys", "fresh bread"), ("opens", "the window"), ("watches", "a film"),
           ("cleans", "the kitchen"), ("visits", "an old friend"), ("learns", "a new language"),
           ("paints", "the door"), ("waits", "for the bus"), ("sings", "a song"),
           ("feeds", "the cat")),
    "de": (("trinkt", "eine Tasse Tee"), ("liest", "die Zeitung"), ("geht", "zum Bahnhof"),
           ("spielt", "Klavier"), ("kocht", "das Abendessen"), ("schreibt", "einen langen Brief"),
           ("kauft", "frisches Brot"), ("öffnet", "das Fenster"), ("sieht", "einen Film"),
           ("putzt", "die Küche"), ("besucht", "einen alten Freund"),
           ("lernt", "eine neue Sprache"), ("streicht", "die Tür"), ("wartet", "auf den Bus"),
           ("singt", "ein Lied"), ("füttert", "die Katze")),
    "fr": (("boit", "une tasse de thé"), ("lit", "le journal"), ("marche", "jusqu'à la gare"),
           ("joue", "du piano"), ("prépare", "le dîner"), ("écrit", "une longue lettre"),
           ("achète", "du pain frais"), ("ouvre", "la fenêtre"), ("regarde", "un film"),
           ("nettoie", "la cuisine"), ("rend visite", "à un vieil ami"),
           ("apprend", "une nouvelle langue"), ("peint", "la porte"), ("attend", "le bus"),
           ("chante", "une chanson"), ("nourrit", "le chat")),
    "es": (("bebe", "una taza de té"), ("lee", "el periódico"), ("camina", "a la estación"),
           ("toca", "el piano"), ("prepara", "la cena"), ("escribe", "una carta larga"),
           ("compra", "pan fresco"), ("abre", "la ventana"), ("ve", "una película"),
           ("limpia", "la cocina"), ("visita", "a un viejo amigo"),
           ("aprende", "un idioma nuevo"), ("pinta", "la puerta"), ("espera", "el autobús"),
           ("canta", "una canción"), ("da de comer", "al gato")),
    "it": (("beve", "una tazza di tè"), ("legge", "il giornale"),
           ("cammina", "fino alla stazione"), ("suona", "il pianoforte"), ("prepara", "la cena"),
           ("scrive", "una lunga lettera"), ("compra", "pane fresco"), ("apre", "la finestra"),
           ("guarda", "un film"), ("pulisce", "la cucina"), ("visita", "un vecchio amico"),
           ("impara", "una nuova lingua"), ("dipinge", "la porta"), ("aspetta", "l'autobus"),
           ("canta", "una canzone"), ("dà da mangiare", "al gatto")),
    "pt": (("bebe", "uma chávena de chá"), ("lê", "o jornal"), ("caminha", "até à estação"),
           ("toca", "piano"), ("prepara", "o jantar"), ("escreve", "uma carta longa"),
           ("compra", "pão fresco"), ("abre", "a janela"), ("vê", "um filme"),
           ("limpa", "a cozinha"), ("visita", "um velho amigo"), ("aprende", "uma nova língua"),
           ("pinta", "a porta"), ("espera", "o autocarro"), ("canta", "uma canção"),
           ("alimenta", "o gato")),
    "nl": (("drinkt", "een kopje thee"), ("leest", "de krant"), ("loopt", "naar het station"),
           ("speelt", "piano"), ("kookt", "het avondeten"), ("schrijft", "een lange brief"),
           ("koopt", "vers brood"), ("opent", "het raam"), ("kijkt", "een film"),
           ("poetst", "de keuken"), ("bezoekt", "een oude vriend"), ("leert", "een nieuwe taal"),
           ("verft", "de deur"), ("wacht", "op de bus"), ("zingt", "een lied"),
           ("voert", "de kat")),
}

TIMES: dict[str, tuple[str, ...]] = {
    "en": ("every morning", "in the evening", "on Sunday", "after work", "today",
           "in the summer", "before breakfast", "once again", "on Monday", "in the afternoon"),
    "de": ("jeden Morgen", "am Abend", "am Sonntag", "nach der Arbeit", "heute", "im Sommer",
           "vor dem Frühstück", "noch einmal", "am Montag", "am Nachmittag"),
    "fr": ("chaque matin", "le soir", "le dimanche", "après le travail", "aujourd'hui",
           "en été", "avant le petit déjeuner", "encore une fois", "le lundi", "l'après-midi"),
    "es": ("cada mañana", "por la noche", "el domingo", "después del trabajo", "hoy",
           "en verano", "antes del desayuno", "otra vez", "el lunes", "por la tarde"),
    "it": ("ogni mattina", "la sera", "la domenica", "dopo il lavoro", "oggi", "d'estate",
           "prima di colazione", "ancora una volta", "il lunedì", "il pomeriggio"),
    "pt": ("todas as manhãs", "à noite", "ao domingo", "depois do trabalho", "hoje",
           "no verão", "antes do pequeno-almoço", "mais uma vez", "à segunda-feira", "à tarde"),
    "nl": ("elke ochtend", "'s avonds", "op zondag", "na het werk", "vandaag", "in de zomer",
           "voor het ontbijt", "nog een keer", "op maandag", "'s middags"),
}

WORD_ORDER = {"en": "svoa", "de": "svao", "fr": "svoa", "es": "svoa", "it": "svoa",
              "pt": "svoa", "nl": "svao"}

SENTENCE_LANGUAGES: tuple[str, ...] = tuple(SUBJECTS)
NUM_SENTENCES = len(SUBJECTS["en"]) * len(PREDICATES["en"]) * len(TIMES["en"])


@dataclass(frozen=True)
class SentenceId:
    """Index of one parallel sentence: subject, predicate, time phrase."""

    s: int
    p: int
    a: int

    @property
    def key(self) -> str:
        """Stable string key, the same in every language."""
        return f"s{self.s:02d}p{self.p:02d}a{self.a:02d}"


def sentence(lang: str, sid: SentenceId) -> str:
    """The sentence ``sid`` in language ``lang``, capitalised, with a final period."""
    subj = SUBJECTS[lang][sid.s]
    verb, obj = PREDICATES[lang][sid.p]
    time = TIMES[lang][sid.a]
    parts = [subj, verb, obj, time] if WORD_ORDER[lang] == "svoa" else [subj, verb, time, obj]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def all_sentence_ids() -> list[SentenceId]:
    """Every sentence index, in a fixed order."""
    return [SentenceId(s, p, a) for s in range(len(SUBJECTS["en"]))
            for p in range(len(PREDICATES["en"])) for a in range(len(TIMES["en"]))]


def held_out_split(key: str, test_fraction: float = 0.05, valid_fraction: float = 0.03) -> str:
    """``train``/``valid``/``test`` for an item key, by a hash that never changes.

    The same key lands in the same split on every machine and every run.
    """
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + valid_fraction:
        return "valid"
    return "train"


def sentence_ids_by_split() -> dict[str, list[SentenceId]]:
    """Sentence indices grouped by their fixed split (same for every language)."""
    out: dict[str, list[SentenceId]] = {"train": [], "valid": [], "test": []}
    for sid in all_sentence_ids():
        out[held_out_split("sent:" + sid.key)].append(sid)
    return out


def content_words(text: str, min_len: int = 5) -> list[str]:
    """Words of ``text`` of at least ``min_len`` letters, punctuation stripped, in order."""
    out = []
    for word in text.split():
        word = word.strip(".,;:!?'\"")
        if len(word) >= min_len and word not in out:
            out.append(word)
    return out


def hotwords_for(lang: str, text: str, rng: random.Random, n_true: int = 2,
                 n_distract: int = 3) -> list[str]:
    """A contextual-ASR hotword list: up to ``n_true`` words of ``text`` and ``n_distract``
    words of the same language that ``text`` lacks, shuffled."""
    words = content_words(text)
    chosen = rng.sample(words, min(n_true, len(words)))
    pool = sorted({w for s in SUBJECTS[lang] for w in content_words(s)}
                  | {w for v, o in PREDICATES[lang] for w in content_words(v + " " + o)}
                  | {w for t in TIMES[lang] for w in content_words(t)})
    pool = [w for w in pool if w not in words]
    chosen += rng.sample(pool, min(n_distract, len(pool)))
    rng.shuffle(chosen)
    return chosen
