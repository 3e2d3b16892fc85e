"""Generate the training text of the shipped tiny model: simple English stories and Q/A chats.

Deterministic for a seed: the same seed gives the same text, byte for byte, on any machine
(only :class:`random.Random` and fixed word lists are involved). The grammar has a few hundred
words (characters, places, objects, actions, feelings) and several templates per sentence, so
a small model learns to write short, readable children's stories and to answer simple
questions in the format::

    Q: What color is the sky?
    A: The sky is blue.

Each document is one story or one exchange; :func:`documents` yields them as strings, and
``scripts/train_tiny_llm.py`` wraps each in ``<s> ... </s>``. Run this file to look at the
text or to write it out::

    python scripts/make_corpus.py --docs 20 --seed 1
    python scripts/make_corpus.py --docs 40000 --out /tmp/tiny-stories.txt
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# -- the lexicon ----------------------------------------------------------------------------
GIRLS = ["Lily", "Mia", "Emma", "Sara", "Anna", "Lucy", "Zoe", "Ella", "Rosa", "Nina", "Amy"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Leo", "Dan"]
ANIMALS = [
    # kind, sound, home, food
    ("cat", "meow", "in a warm house", "fish"),
    ("dog", "woof", "in a little house", "bones"),
    ("bird", "tweet", "in a nest in a tree", "seeds"),
    ("duck", "quack", "by the pond", "bread"),
    ("cow", "moo", "on a farm", "grass"),
    ("frog", "ribbit", "in the pond", "bugs"),
    ("bunny", "squeak", "in a hole under the ground", "carrots"),
    ("bear", "growl", "in a big cave", "honey"),
    ("fish", "blub", "in the water", "tiny plants"),
    ("horse", "neigh", "in a barn", "hay"),
    ("sheep", "baa", "on a green hill", "grass"),
    ("mouse", "squeak", "in a small hole in the wall", "cheese"),
    ("owl", "hoot", "in an old tree", "mice"),
    ("pig", "oink", "on a farm", "apples"),
    ("lion", "roar", "in the wild grass", "meat"),
]
ANIMAL_NAMES = ["Mittens", "Spot", "Pip", "Daisy", "Buster", "Coco", "Fluffy", "Bubbles", "Sunny"]
ADJ_PERSON = ["kind", "brave", "happy", "curious", "shy", "clever", "funny", "gentle"]
ADJ_ANIMAL = ["small", "fluffy", "friendly", "little", "sleepy", "playful", "soft", "old"]
PLACES = [
    "the park",
    "the forest",
    "the garden",
    "the beach",
    "the farm",
    "the river",
    "the big hill",
    "the school",
    "the town",
    "the lake",
    "the meadow",
    "the zoo",
]
HOMES = [
    "a little house by the river",
    "a small house near the forest",
    "a big house with a red door",
    "a cozy house in the town",
    "a white house on a hill",
    "a blue house next to the park",
]
OBJECTS = [
    # noun, article, adjectives that fit
    ("ball", "a", ["red", "big", "bouncy", "blue"]),
    ("kite", "a", ["yellow", "long", "pretty", "green"]),
    ("box", "a", ["small", "old", "shiny", "brown"]),
    ("hat", "a", ["funny", "big", "pink", "warm"]),
    ("book", "a", ["old", "big", "new", "magic"]),
    ("flower", "a", ["pretty", "yellow", "red", "tiny"]),
    ("key", "a", ["golden", "shiny", "little", "old"]),
    ("shell", "a", ["pink", "smooth", "small", "white"]),
    ("toy car", "a", ["red", "fast", "little", "blue"]),
    ("cake", "a", ["big", "sweet", "chocolate", "round"]),
    ("apple", "an", ["red", "green", "shiny", "sweet"]),
    ("egg", "an", ["white", "big", "little", "blue"]),
    ("umbrella", "an", ["old", "purple", "big", "green"]),
    ("stone", "a", ["smooth", "shiny", "round", "gray"]),
    ("drum", "a", ["loud", "little", "red", "new"]),
    ("map", "a", ["old", "secret", "big", "torn"]),
    ("boat", "a", ["little", "paper", "blue", "wooden"]),
    ("doll", "a", ["soft", "pretty", "old", "little"]),
]
ACTIVITIES = [
    "play outside",
    "run in the grass",
    "sing songs",
    "draw pictures",
    "read books",
    "jump in puddles",
    "look at the stars",
    "swim in the lake",
    "climb trees",
    "bake cookies",
    "dance in the rain",
    "fly a kite",
    "pick flowers",
    "build sand castles",
    "play with friends",
    "help in the garden",
]
FEELINGS_GOOD = ["happy", "glad", "excited", "proud", "thankful", "calm", "joyful"]
FEELINGS_BAD = ["sad", "scared", "worried", "tired", "upset", "lonely", "angry"]
WEATHER = [
    "The sun was shining.",
    "It was a sunny day.",
    "The sky was blue and the birds were singing.",
    "It was a rainy day.",
    "The wind was blowing.",
    "It was a cold morning.",
    "It was a warm and bright day.",
    "Snow was falling softly.",
]
PROBLEMS = [
    ("the {obj} was stuck in a tall tree", "climbed up and got the {obj} down"),
    ("the {obj} fell into the water", "used a long stick to get the {obj} out"),
    ("the {obj} was broken", "fixed the {obj} with some tape"),
    ("the {obj} was too high to reach", "stood on a chair and reached the {obj}"),
    ("the {obj} was lost in the tall grass", "looked and looked until they found the {obj}"),
    ("a big dog took the {obj}", "asked the dog nicely, and the dog gave back the {obj}"),
    ("the {obj} was too heavy to carry", "helped to carry the {obj}"),
]
MORALS = [
    "Friends help each other.",
    "It is good to share.",
    "Being kind makes everyone happy.",
    "It is okay to ask for help.",
    "Never give up.",
    "Saying sorry makes things better.",
    "Being brave is not easy, but it is good.",
    "Working together is more fun.",
]
SAYINGS_HELP = [
    "Don't worry, I will help you!",
    "Let me help you.",
    "We can do it together.",
    "I have an idea!",
    "Do not be sad. I am here.",
]
SAYINGS_THANKS = [
    "Thank you so much!",
    "Thank you, you are a good friend!",
    "Thank you for helping me!",
    "You are the best!",
]
ENDINGS = [
    "From that day on, {a} and {b} were best friends.",
    "They played together until the sun went down.",
    "That night, {a} went to bed with a big smile.",
    "{A} and {b} laughed and played all day.",
    "It was the best day ever.",
    "Then they went home for dinner.",
]

COLORS = [
    ("the sky", "blue"),
    ("the grass", "green"),
    ("the sun", "yellow"),
    ("snow", "white"),
    ("a banana", "yellow"),
    ("a carrot", "orange"),
    ("a strawberry", "red"),
    ("a leaf", "green"),
    ("milk", "white"),
    ("a lemon", "yellow"),
    ("a tomato", "red"),
    ("the sea", "blue"),
    ("a cloud", "white"),
    ("coal", "black"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("day", "night"),
    ("happy", "sad"),
    ("fast", "slow"),
    ("old", "new"),
    ("wet", "dry"),
    ("open", "closed"),
    ("loud", "quiet"),
    ("light", "dark"),
    ("in", "out"),
    ("tall", "short"),
    ("full", "empty"),
]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
GREETINGS = [
    ("Hello!", "Hello! How are you today?"),
    ("Hi!", "Hi there! It is nice to meet you."),
    ("Good morning!", "Good morning! I hope you have a good day."),
    ("How are you?", "I am happy, thank you! How are you?"),
    ("What is your name?", "My name is Tiny. I am a small story model."),
    ("Who are you?", "I am Tiny, a small model that tells stories."),
    ("What can you do?", "I can tell short stories and answer simple questions."),
    ("Thank you!", "You are welcome!"),
    ("Good night!", "Good night! Sleep well."),
    ("Goodbye!", "Goodbye! See you soon."),
    ("Are you a robot?", "I am a small computer program. I like stories."),
    ("Do you like stories?", "Yes! I love stories about animals and friends."),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SEASONS = [
    ("winter", "cold", "snow falls and children build snowmen"),
    ("spring", "warm", "flowers grow and birds sing"),
    ("summer", "hot", "children swim and play in the sun"),
    ("autumn", "cool", "leaves turn red and fall from the trees"),
]


@dataclass(frozen=True)
class Character:
    """Someone in a story: how to name them the first time and after, and their pronouns."""

    intro: str  # "a little girl named Lily"
    name: str  # "Lily"
    subj: str  # "she"
    obj: str  # "her"
    poss: str  # "her"
    kind: str  # "girl"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class StoryWriter:
    """Writes stories and exchanges from one seeded random stream."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: list[str]) -> str:
        return self.rng.choice(options)

    # -- characters -------------------------------------------------------------------------
    def person(self, avoid: str = "") -> Character:
        rng = self.rng
        girl = rng.random() < 0.5
        names = [n for n in (GIRLS if girl else BOYS) if n != avoid]
        name = rng.choice(names)
        adj = rng.choice(ADJ_PERSON)
        kind = "girl" if girl else "boy"
        intro = rng.choice(
            [f"a {adj} {kind} named {name}", f"a {adj} {kind} called {name}", f"{kind} {name}"]
        )
        if intro.startswith(kind):
            intro = f"a {kind} named {name}"
        if girl:
            return Character(intro, name, "she", "her", "her", kind)
        return Character(intro, name, "he", "him", "his", kind)

    def animal(self, avoid: str = "") -> Character:
        rng = self.rng
        kind = rng.choice(ANIMALS)[0]
        name = rng.choice([n for n in ANIMAL_NAMES if n != avoid])
        adj = rng.choice(ADJ_ANIMAL)
        article = "an" if adj[0] in "aeiou" else "a"
        intro = f"{article} {adj} {kind} named {name}"
        if rng.random() < 0.5:
            return Character(intro, name, "he", "him", "his", kind)
        return Character(intro, name, "she", "her", "her", kind)

    def character(self, avoid: str = "") -> Character:
        return self.person(avoid) if self.rng.random() < 0.6 else self.animal(avoid)

    def thing(self) -> tuple[str, str]:
        """(``"a red ball"``, ``"ball"``)."""
        noun, _, adjs = self.rng.choice(OBJECTS)
        adj = self.rng.choice(adjs)
        article = "an" if adj[0] in "aeiou" else "a"
        return f"{article} {adj} {noun}", noun

    # -- stories ----------------------------------------------------------------------------
    def story(self, hero: Character | None = None) -> str:
        rng = self.rng
        hero = hero or self.character()
        friend = self.character(avoid=hero.name)
        thing, noun = self.thing()
        place = rng.choice(PLACES)
        s: list[str] = []
        opening = rng.choice(
            [
                f"Once upon a time, there was {hero.intro}.",
                f"Once upon a time, there was {hero.intro}.",
                f"One day, {hero.intro} went to {place}.",
                f"There once was {hero.intro}.",
                f"Once upon a time, in {rng.choice(HOMES)}, there lived {hero.intro}.",
            ]
        )
        s.append(opening)
        if rng.random() < 0.6:
            s.append(
                rng.choice(
                    [
                        f"{_cap(hero.subj)} loved to {rng.choice(ACTIVITIES)}.",
                        f"{hero.name} liked to {rng.choice(ACTIVITIES)} every day.",
                        f"{_cap(hero.poss)} favorite thing was to {rng.choice(ACTIVITIES)}.",
                        f"{hero.name} was very {rng.choice(ADJ_PERSON)}.",
                    ]
                )
            )
        if rng.random() < 0.4:
            s.append(rng.choice(WEATHER))
        if not opening.startswith("One day"):
            s.append(
                rng.choice(
                    [
                        f"One day, {hero.name} went to {place}.",
                        f"One day, {hero.name} and {hero.poss} friend {friend.name} went to"
                        f" {place}.",
                        f"One morning, {hero.name} walked to {place}.",
                    ]
                )
            )
        s.append(
            rng.choice(
                [
                    f"There, {hero.subj} found {thing}.",
                    f"{_cap(hero.subj)} saw {thing} on the ground.",
                    f"At {place}, {hero.name} found {thing}.",
                    f"Under a tree, {hero.name} found {thing}.",
                ]
            )
        )
        s.append(
            rng.choice(
                [
                    f"{hero.name} felt very {rng.choice(FEELINGS_GOOD)}.",
                    f"{_cap(hero.subj)} was so {rng.choice(FEELINGS_GOOD)}!",
                    f'"Look at this {noun}!" said {hero.name}.',
                ]
            )
        )
        kind_of_story = rng.random()
        if kind_of_story < 0.55:
            problem, fix = rng.choice(PROBLEMS)
            bad = rng.choice(FEELINGS_BAD)
            s.append(f"But then {problem.format(obj=noun)}.")
            s.append(
                rng.choice(
                    [
                        f"{hero.name} was {bad}.",
                        f"{hero.name} felt {bad} and started to cry.",
                        f'"Oh no!" said {hero.name}. {_cap(hero.subj)} was {bad}.',
                    ]
                )
            )
            if friend.name not in " ".join(s):
                s.append(f"Just then, {friend.intro} came by.")
            s.append(f'"{rng.choice(SAYINGS_HELP)}" said {friend.name}.')
            s.append(f"{friend.name} {fix.format(obj=noun)}.")
            s.append(f'{hero.name} smiled. "{rng.choice(SAYINGS_THANKS)}" {hero.subj} said.')
            s.append(rng.choice(ENDINGS).format(a=hero.name, A=hero.name, b=friend.name))
            if rng.random() < 0.5:
                s.append(f"The moral of the story is: {rng.choice(MORALS)}")
        elif kind_of_story < 0.8:
            s.append(
                f"{hero.name} wanted to show the {noun} to {friend.intro}."
                if friend.name not in " ".join(s)
                else f"{hero.name} wanted to show the {noun} to {friend.name}."
            )
            s.append(
                rng.choice(
                    [
                        f'{friend.name} said, "Wow! Can I play with it too?"',
                        f'{friend.name} said, "That is a very nice {noun}!"',
                        f'"Can we share it?" asked {friend.name}.',
                    ]
                )
            )
            s.append(
                rng.choice(
                    [
                        f'"Yes, let\'s share," said {hero.name}.',
                        f"{hero.name} thought for a moment and said yes.",
                        f'"Of course!" said {hero.name} with a smile.',
                    ]
                )
            )
            s.append(f"They played with the {noun} and had lots of fun at {place}.")
            s.append(rng.choice(ENDINGS).format(a=hero.name, A=hero.name, b=friend.name))
            if rng.random() < 0.4:
                s.append(f"The moral of the story is: {rng.choice(MORALS)}")
        else:
            s.append(
                rng.choice(
                    [
                        f"{hero.name} took the {noun} home.",
                        f"{hero.name} put the {noun} in {hero.poss} bag and went home.",
                    ]
                )
            )
            s.append(
                rng.choice(
                    [
                        f'{_cap(hero.poss)} mom said, "What a nice {noun}!"',
                        f'{_cap(hero.poss)} dad smiled and said, "Good job!"',
                        f"At home, {hero.subj} showed the {noun} to {hero.poss} family.",
                    ]
                )
            )
            s.append(
                rng.choice(
                    [
                        f"{hero.name} felt {rng.choice(FEELINGS_GOOD)}.",
                        f"That night, {hero.name} slept with the {noun} next to {hero.obj}.",
                        f"{hero.name} kept the {noun} forever.",
                    ]
                )
            )
            s.append("The end.")
        # Paragraphs of two to four sentences, as children's books print them.
        paragraphs: list[str] = []
        i = 0
        while i < len(s):
            n = rng.randint(2, 4)
            paragraphs.append(" ".join(s[i : i + n]))
            i += n
        return "\n".join(paragraphs)

    # -- questions and answers --------------------------------------------------------------
    def exchange(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.14:
            thing, color = rng.choice(COLORS)
            q = f"What color is {thing}?"
            a = f"{_cap(thing)} is {color}."
        elif r < 0.26:
            kind, sound, _, _ = rng.choice(ANIMALS)
            q = rng.choice([f"What does a {kind} say?", f"What sound does a {kind} make?"])
            a = f'A {kind} says "{sound}".'
        elif r < 0.36:
            kind, _, home, _ = rng.choice(ANIMALS)
            q = f"Where does a {kind} live?"
            a = f"A {kind} lives {home}."
        elif r < 0.44:
            kind, _, _, food = rng.choice(ANIMALS)
            q = f"What does a {kind} eat?"
            a = f"A {kind} likes to eat {food}."
        elif r < 0.54:
            word, other = rng.choice(OPPOSITES)
            if rng.random() < 0.5:
                word, other = other, word
            q = f"What is the opposite of {word}?"
            a = f"The opposite of {word} is {other}."
        elif r < 0.66:
            x = rng.randint(0, 5)
            y = rng.randint(0, 5)
            if rng.random() < 0.5:
                q = f"What is {NUMBERS[x]} plus {NUMBERS[y]}?"
                a = f"{_cap(NUMBERS[x])} plus {NUMBERS[y]} is {NUMBERS[x + y]}."
            else:
                q = f"What is {x} + {y}?"
                a = f"{x} + {y} = {x + y}."
        elif r < 0.72:
            i = rng.randrange(len(DAYS))
            q = f"What day comes after {DAYS[i]}?"
            a = f"After {DAYS[i]} comes {DAYS[(i + 1) % 7]}."
        elif r < 0.76:
            season, temp, what = rng.choice(SEASONS)
            q = f"What happens in {season}?"
            a = f"In {season} it is {temp}. {_cap(what)}."
        elif r < 0.86:
            q, a = rng.choice(GREETINGS)
        else:
            # Mostly animals: "a story about a cat" should be about a cat.
            hero = self.animal() if rng.random() < 0.7 else self.person()
            topic = hero.kind
            article = "an" if topic[0] in "aeiou" else "a"
            q = rng.choice(
                [
                    f"Tell me a story about {article} {topic}.",
                    "Tell me a story.",
                    f"Can you tell me a story about {article} {topic}?",
                ]
            )
            a = self.story(hero).replace("\n", " ")
        text = f"Q: {q}\nA: {a}"
        if rng.random() < 0.15:  # a second turn now and then
            q2, a2 = rng.choice([*GREETINGS[-5:-1], ("Thank you!", "You are welcome!")])
            text += f"\nQ: {q2}\nA: {a2}"
        return text


def documents(count: int, seed: int = 0, qa_share: float = 0.4) -> Iterator[str]:
    """``count`` documents (stories, and exchanges with share ``qa_share``), for ``seed``."""
    writer = StoryWriter(seed)
    for _ in range(count):
        yield writer.exchange() if writer.rng.random() < qa_share else writer.story()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20, help="how many documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write here (documents separated by a blank line)")
    args = parser.parse_args(argv)
    text = "\n\n".join(documents(args.docs, args.seed)) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {len(text.encode())} bytes to {args.out}\n")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
