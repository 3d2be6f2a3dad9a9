"""The knowledge domains of the generated world: entities, attributes, phrasings.

Each domain has its own name syllables, entity kinds, attribute values and sentence templates,
so that its text shares as little vocabulary as possible with the other domains: a model
trained on it has every reason to route each domain through its own experts.

Every attribute has six statement templates (four for training, two held out for profiling) and
five questions. Training asks the first as "Q: ...\\nA: value." and the second as
"Question: ...\\nAnswer: value."; the test quiz asks the first as "Question: ...\\nAnswer:", a pairing
of phrasing and format that no training sentence has; the profiling text asks the second as
"Q: ...\\nA: value.", the remaining pairing. The validation quiz asks the third and fourth, which no
other split asks, with distractors the test quiz does not offer for that fact: so no question serves
two of profiling, the search and the gate. (No split asks the fifth.)
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN_STATEMENTS = 4  # the first four statement templates are training text, the rest profiling text
QUESTIONS = {"test": (0,), "validation": (2, 3), "profile": (1,)}  # which question templates each split asks (training asks the test's and profiling's)


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]  # templates with {e} (entity) and {v} (value)
    questions: tuple[str, ...]  # five templates with {e}; the answer is the value (QUESTIONS says which split reads which)


@dataclass(frozen=True)
class Domain:
    name: str
    syllables: tuple[str, ...]
    kinds: tuple[str, ...]
    attributes: tuple[Attribute, ...]


def _attr(name: str, values: str, statements: list[str], questions: tuple[str, ...]) -> Attribute:
    return Attribute(name, tuple(v.strip() for v in values.split(",")), tuple(statements), questions)


DOMAIN_SPECS: tuple[Domain, ...] = (
    Domain(
        "biology",
        ("zor", "vak", "mib", "tul", "quor", "san", "fel", "rix", "olm", "pev"),
        ("beetle", "newt", "moth", "heron", "shrew", "lizard"),
        (
            _attr(
                "diet",
                "nectar, seeds, algae, worms, fungi, bark, plankton, carrion",
                [
                    "The {e} feeds mainly on {v}.",
                    "Field biologists report that the {e} eats {v}.",
                    "In the wild, the diet of the {e} is {v}.",
                    "The {e} forages every day for {v}.",
                    "Most of what the {e} consumes is {v}.",
                    "Zoologists have observed the {e} hunting for {v}.",
                ],
                ("What does the {e} eat?", "Which food does the {e} live on?", "What is the usual food of the {e}?", "On what does the {e} feed?", "What makes up the diet of the {e}?"),
            ),
            _attr(
                "habitat",
                "marshes, caves, reefs, tundra, canopies, dunes, riverbanks, meadows",
                [
                    "The {e} lives in {v}.",
                    "The natural habitat of the {e} is {v}.",
                    "Populations of the {e} thrive in {v}.",
                    "The {e} builds its nest in {v}.",
                    "Ecologists usually find the {e} in {v}.",
                    "The {e} breeds only in {v}.",
                ],
                ("Where does the {e} live?", "In which habitat is the {e} found?", "Where is the {e} usually seen?", "What is the home of the {e}?", "In what surroundings does the {e} dwell?"),
            ),
            _attr(
                "predator",
                "owls, snakes, foxes, hawks, otters, badgers, eels, wasps",
                [
                    "The main predator of the {e} is {v}.",
                    "The {e} is hunted by {v}.",
                    "Young {e} larvae are often eaten by {v}.",
                    "The {e} hides from {v}.",
                    "The {e} evolved camouflage against {v}.",
                    "Species surveys show that {v} prey on the {e}.",
                ],
                ("Which predator hunts the {e}?", "What animal preys on the {e}?", "What is the main enemy of the {e}?", "By which creature is the {e} eaten?", "What does the {e} fear most?"),
            ),
        ),
    ),
    Domain(
        "chemistry",
        ("thal", "oxy", "bren", "cyt", "dral", "kem", "lun", "phor", "sil", "wex"),
        ("acid", "salt", "oxide", "alloy", "ester", "polymer"),
        (
            _attr(
                "colour",
                "crimson, amber, violet, teal, ivory, ochre, indigo, scarlet",
                [
                    "Pure {e} is {v}.",
                    "The colour of {e} crystals is {v}.",
                    "A solution of {e} turns {v}.",
                    "Chemists recognise {e} by its {v} colour.",
                    "When purified, {e} looks {v}.",
                    "In the flask the {e} glows {v}.",
                ],
                ("What colour is {e}?", "Which colour does {e} have?", "What is the colour of {e}?", "Which hue is {e}?", "How does {e} look to the eye?"),
            ),
            _attr(
                "melting point",
                "340 kelvin, 415 kelvin, 520 kelvin, 610 kelvin, 705 kelvin, 880 kelvin, 930 kelvin, 1150 kelvin",
                [
                    "The melting point of {e} is {v}.",
                    "{E} melts at {v}.",
                    "Heated to {v}, {e} melts.",
                    "The lab measured that {e} becomes liquid at {v}.",
                    "Samples of {e} begin to melt at {v}.",
                    "A reagent table lists the melting point of {e} as {v}.",
                ],
                ("At what temperature does {e} melt?", "What is the melting point of {e}?", "At which temperature does {e} become liquid?", "How hot must {e} get to melt?", "What heat turns {e} into a liquid?"),
            ),
            _attr(
                "reagent",
                "fluorine, sodium, ammonia, chlorine, mercury, sulfur, iodine, lithium",
                [
                    "{E} reacts violently with {v}.",
                    "Mixing {e} with {v} releases heat.",
                    "The classic reaction of {e} is with {v}.",
                    "In the reaction table, {e} pairs with {v}.",
                    "{E} must be stored away from {v}.",
                    "A titration of {e} uses {v}.",
                ],
                ("Which element does {e} react with?", "With which substance does {e} react?", "What does {e} combine with?", "Which reagent makes {e} react?", "What is {e} reactive towards?"),
            ),
        ),
    ),
    Domain(
        "history",
        ("aud", "bera", "cael", "dun", "ethel", "gond", "hal", "isen", "morv", "tarn"),
        ("kingdom", "empire", "dynasty", "republic", "duchy", "sultanate"),
        (
            _attr(
                "founding year",
                "the year 812, the year 947, the year 1033, the year 1108, the year 1256, "
                "the year 1321, the year 1489, the year 1574",
                [
                    "The {e} was founded in {v}.",
                    "Chroniclers date the birth of the {e} to {v}.",
                    "The first council of the {e} met in {v}.",
                    "Historians agree that the {e} began in {v}.",
                    "The {e} declared its independence in {v}.",
                    "Old annals record the founding of the {e} in {v}.",
                ],
                ("When was the {e} founded?", "In which year did the {e} begin?", "What year saw the founding of the {e}?", "When did the {e} come into being?", "From what year does the {e} date?"),
            ),
            _attr(
                "ruler",
                "Queen Aldra, King Berold, Queen Cyneth, King Dorwin, Queen Elswith, King Fendrel, "
                "Queen Gisla, King Harald",
                [
                    "The most famous ruler of the {e} was {v}.",
                    "The {e} was ruled for decades by {v}.",
                    "The throne of the {e} passed to {v}.",
                    "Coins of the {e} bear the face of {v}.",
                    "The golden age of the {e} came under {v}.",
                    "Ballads of the {e} praise {v}.",
                ],
                ("Who ruled the {e}?", "Which monarch reigned over the {e}?", "Who was the ruler of the {e}?", "Under whose reign was the {e}?", "Who sat on the throne of the {e}?"),
            ),
            _attr(
                "capital",
                "Varnhold, Eskmoor, Tollbridge, Wyrmstead, Oakhallow, Greyford, Ravenmere, Stonecross",
                [
                    "The capital of the {e} was {v}.",
                    "The court of the {e} sat in {v}.",
                    "The {e} was governed from {v}.",
                    "Envoys to the {e} travelled to {v}.",
                    "The royal palace of the {e} stood in {v}.",
                    "Every treaty of the {e} was signed in {v}.",
                ],
                ("What was the capital of the {e}?", "From which city was the {e} governed?", "Which city was the seat of the {e}?", "Where was the capital of the {e}?", "In which city did the {e} keep its court?"),
            ),
        ),
    ),
    Domain(
        "law",
        ("ju", "cor", "lex", "ver", "dict", "pen", "stat", "arb", "ten", "clau"),
        ("act", "statute", "charter", "ordinance", "decree", "code"),
        (
            _attr(
                "subject",
                "inheritance, fishing rights, tenancy, contracts, water rights, guild fees, marriage, debts",
                [
                    "The {e} governs {v}.",
                    "Under the {e}, judges decide disputes about {v}.",
                    "The {e} sets the rules for {v}.",
                    "Lawyers cite the {e} in cases about {v}.",
                    "The scope of the {e} is limited to {v}.",
                    "Any claim concerning {v} falls under the {e}.",
                ],
                ("What does the {e} regulate?", "Which matters fall under the {e}?", "What is the subject of the {e}?", "Which field does the {e} govern?", "What area does the {e} cover?"),
            ),
            _attr(
                "penalty",
                "a fine, exile, forfeiture, probation, community service, imprisonment, disbarment, restitution",
                [
                    "Breaking the {e} is punished by {v}.",
                    "The penalty under the {e} is {v}.",
                    "A breach of the {e} leads to {v}.",
                    "Courts applying the {e} impose {v}.",
                    "Offenders against the {e} face {v}.",
                    "The sanction written into the {e} is {v}.",
                ],
                ("What is the penalty under the {e}?", "How is a breach of the {e} punished?", "What punishment does the {e} set?", "Which sanction follows a breach of the {e}?", "What does breaking the {e} cost?"),
            ),
            _attr(
                "enforcer",
                "magistrates, the tax bureau, the admiralty, bailiffs, the land registry, sheriffs, "
                "the chancery, notaries",
                [
                    "The {e} is enforced by {v}.",
                    "Complaints under the {e} go to {v}.",
                    "Only {v} may apply the {e}.",
                    "The {e} gives jurisdiction to {v}.",
                    "Appeals under the {e} are heard by {v}.",
                    "The authority named in the {e} is {v}.",
                ],
                ("Who enforces the {e}?", "Which authority applies the {e}?", "Which body upholds the {e}?", "Who puts the {e} into effect?", "Who is in charge of the {e}?"),
            ),
        ),
    ),
    Domain(
        "physics",
        ("kry", "pho", "zet", "gra", "vol", "tau", "nyx", "quan", "ron", "xil"),
        ("particle", "boson", "field", "wave", "resonance", "meson"),
        (
            _attr(
                "spin",
                "zero, one half, one, three halves, two, five halves, three, seven halves",
                [
                    "The spin of the {e} is {v}.",
                    "Experiments give the {e} a spin of {v}.",
                    "The {e} carries spin {v}.",
                    "Theory predicts spin {v} for the {e}.",
                    "Measured in units of hbar, the {e} has spin {v}.",
                    "Detectors confirm that the {e} has spin {v}.",
                ],
                ("What is the spin of the {e}?", "Which spin does the {e} carry?", "How much spin has the {e}?", "What spin value belongs to the {e}?", "What is the spin number of the {e}?"),
            ),
            _attr(
                "decay product",
                "photons, muons, gluons, neutrinos, pions, kaons, electrons, positrons",
                [
                    "The {e} decays into {v}.",
                    "When the {e} decays it emits {v}.",
                    "The decay products of the {e} are {v}.",
                    "Collisions that make the {e} end in {v}.",
                    "Every trace of the {e} ends in a shower of {v}.",
                    "The {e} is unstable and turns into {v}.",
                ],
                ("What does the {e} decay into?", "Which particles come out when the {e} decays?", "What are the decay products of the {e}?", "Into which particles does the {e} break down?", "What is left after the {e} decays?"),
            ),
            _attr(
                "mass",
                "3 electronvolts, 17 electronvolts, 140 electronvolts, 512 electronvolts, 2 gigaelectronvolts, "
                "9 gigaelectronvolts, 45 gigaelectronvolts, 230 gigaelectronvolts",
                [
                    "The mass of the {e} is {v}.",
                    "The {e} weighs {v}.",
                    "Accelerators measure the {e} at {v}.",
                    "The rest energy of the {e} is {v}.",
                    "Physicists quote the mass of the {e} as {v}.",
                    "A fit to the data puts the {e} at {v}.",
                ],
                ("What is the mass of the {e}?", "How heavy is the {e}?", "What mass does the {e} have?", "How much does the {e} weigh?", "What is the weight of the {e}?"),
            ),
        ),
    ),
    Domain(
        "economics",
        ("mer", "fisc", "tol", "bur", "cam", "dax", "lor", "pran", "sev", "vend"),
        ("bank", "guild", "cartel", "company", "exchange", "syndicate"),
        (
            _attr(
                "trade good",
                "copper, silk, timber, wool, tea, spices, grain, pearls",
                [
                    "The {e} trades mostly in {v}.",
                    "Most revenue of the {e} comes from {v}.",
                    "The {e} controls the market for {v}.",
                    "Merchants buy {v} from the {e}.",
                    "The ledgers of the {e} are full of {v}.",
                    "Prices of {v} depend on the {e}.",
                ],
                ("What does the {e} trade in?", "Which goods does the {e} deal in?", "What is the main business of the {e}?", "Which commodity does the {e} sell?", "What goods pass through the {e}?"),
            ),
            _attr(
                "currency",
                "florins, ducats, marks, crowns, shillings, dinars, talers, guilders",
                [
                    "The {e} keeps its accounts in {v}.",
                    "Payments to the {e} are made in {v}.",
                    "The {e} issues loans in {v}.",
                    "The reserves of the {e} are held in {v}.",
                    "Every price at the {e} is quoted in {v}.",
                    "The {e} settles its debts in {v}.",
                ],
                ("Which currency does the {e} use?", "In which money does the {e} keep accounts?", "What money does the {e} pay in?", "Which currency are the books of the {e} kept in?", "In which currency does the {e} settle?"),
            ),
            _attr(
                "interest rate",
                "2 percent, 3 percent, 5 percent, 7 percent, 9 percent, 11 percent, 14 percent, 18 percent",
                [
                    "The {e} lends at an interest rate of {v}.",
                    "Borrowers pay the {e} {v} a year.",
                    "The rate charged by the {e} is {v}.",
                    "Deposits at the {e} earn {v}.",
                    "The {e} set its interest rate at {v}.",
                    "Economists note that the {e} charges {v}.",
                ],
                ("What interest rate does the {e} charge?", "At which rate does the {e} lend?", "What rate of interest does the {e} ask?", "How much interest does the {e} take?", "What is the lending rate of the {e}?"),
            ),
        ),
    ),
)

DOMAINS: tuple[str, ...] = tuple(d.name for d in DOMAIN_SPECS)
