"""The Pólya catalogue: 64 problem-solving heuristics and prompt rendering.

Written in our own words, in the spirit of G. Pólya's *How to Solve It*. The order is part of the
contract: the first n entries form the heuristic set for n = 1, 4, 8, 16, 32, 64, so smaller sets nest
inside larger ones and a sweep over n compares like with like. Never reorder; append only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Heuristic:
    id: str
    name: str
    description: str  # one line: what the heuristic is
    instruction: str  # how we ask a model to solve with it


# (id, name, description, instruction)
_ROWS: list[tuple[str, str, str, str]] = [
    # ---- n = 1
    ("decompose-recombine", "Decompose and recombine",
     "Split the problem into smaller parts, solve each, then put the partial results together.",
     "Break the problem into a few smaller sub-problems. Solve each sub-problem separately, say what each "
     "one gives you, and then combine the partial results into the answer."),
    # ---- n = 4
    ("work-backwards", "Work backwards",
     "Start from what is wanted and reason back, step by step, to what is given.",
     "Start from the quantity you are asked to find. Ask what you would need to know just before it, then "
     "what you would need before that, and keep going back until you reach the given data. Then run the "
     "chain forwards to get the answer."),
    ("auxiliary-element", "Introduce an auxiliary element",
     "Add a helper quantity, variable, line or construction that makes the structure visible.",
     "Introduce a helpful auxiliary element that is not in the statement - a new variable, an intermediate "
     "quantity, an extra line or a convenient total - and use it to connect the data to the unknown."),
    ("analogy", "Use an analogous problem",
     "Recall a similar, simpler problem whose method can be carried over.",
     "Think of a similar problem you already know how to solve - one with the same kind of unknown or the "
     "same structure. State it briefly, recall its method, and adapt that method to this problem."),
    # ---- n = 8
    ("specialize", "Specialize",
     "Try special or small cases first to see what happens, then return to the general problem.",
     "Before solving in general, try one or two special cases with small or simple numbers. Observe what "
     "happens in them and use that insight to solve the actual problem."),
    ("generalize", "Generalize",
     "Solve a more general version of the problem; the general form can be easier to see through.",
     "Replace the specific numbers with general symbols and solve the more general problem. Then substitute "
     "the actual values to get the answer."),
    ("restate", "Restate the problem",
     "Say the problem again in different words or another form until its core is plain.",
     "Restate the problem in your own words, naming clearly what is given, what is unknown and what "
     "condition links them. Then solve the restated problem."),
    ("draw-figure", "Draw a figure or diagram",
     "Make a picture, diagram, number line or table that shows the relations at a glance.",
     "Describe a figure, diagram, number line or table that represents the situation, label the known and "
     "unknown quantities on it, and read the solution off that representation."),
    # ---- n = 16
    ("look-at-unknown", "Look at the unknown",
     "Focus on what is asked and find a familiar way to obtain that kind of quantity.",
     "Look closely at the unknown: what kind of quantity is it, and what usual ways are there to find a "
     "quantity of that kind? Choose one of those ways and follow it to the answer."),
    ("use-all-data", "Use all the data",
     "Check that every given fact and condition has been used; an unused datum points to a missing step.",
     "List every piece of given information. As you solve, make sure each one is used; if one is still "
     "unused, ask how it must enter the solution."),
    ("guess-and-check", "Guess and check",
     "Make a reasonable guess, test it against the conditions, and refine it.",
     "Make a reasonable first guess for the answer, check it against all conditions, and use how far off it "
     "is to improve the guess. Repeat until the guess satisfies every condition, then confirm it."),
    ("look-back", "Look back and verify",
     "After reaching a result, check it by another route, by substitution or by estimating.",
     "Solve the problem, then look back: check the result by substituting it into the conditions, by a "
     "rough estimate, or by a second, independent method. Fix anything that does not agree."),
    ("find-pattern", "Find a pattern",
     "Compute the first few cases, tabulate them, and spot the rule that continues them.",
     "Work out the first few cases and write them in a small table. Look for a pattern, state the rule it "
     "suggests, and use the rule to reach the case the problem asks about."),
    ("invariant", "Look for an invariant",
     "Find a quantity that stays the same while things change; it constrains what can happen.",
     "Look for a quantity that does not change as the situation evolves (a total, a difference, a parity, "
     "a ratio). Use the fact that it stays fixed to determine the answer."),
    ("symmetry", "Exploit symmetry",
     "Use symmetry between parts or roles to reduce the work or to guess the structure of the answer.",
     "Look for symmetry in the problem - interchangeable quantities, balanced roles, mirror situations. Use "
     "it to reduce the number of cases or to simplify the computation."),
    ("extreme-case", "Consider extreme cases",
     "Push quantities to their largest, smallest or boundary values to learn about the general case.",
     "Consider the extreme cases - the largest, smallest or boundary values of the quantities involved. "
     "Use what happens at the extremes to bound or pin down the answer."),
    # ---- n = 32
    ("case-analysis", "Split into cases",
     "Divide the possibilities into a few exhaustive cases and treat each one separately.",
     "Split the situation into a small number of cases that together cover every possibility. Solve each "
     "case on its own and then combine the results."),
    ("contradiction", "Argue by contradiction",
     "Assume the opposite of what you want and derive an impossibility.",
     "Suppose the claim or candidate answer were false, follow the consequences of that assumption until "
     "they contradict a given fact, and conclude what must be true."),
    ("induction", "Use mathematical induction",
     "Show a statement for a base case and that each case implies the next.",
     "Treat the problem as a statement about 1, 2, 3, ... Check the first case, show how each case follows "
     "from the one before it, and apply the result to the case that is asked."),
    ("equation", "Set up an equation",
     "Translate the words into an equation or system linking the unknown to the data, then solve it.",
     "Name the unknown with a letter, translate each condition of the problem into an equation, and solve "
     "the resulting equation or system."),
    ("drop-condition", "Drop a condition",
     "Keep only part of the conditions, see how far the unknown is then determined, and add the rest back.",
     "Temporarily drop one of the conditions and see what range of possibilities remains for the unknown. "
     "Then bring the dropped condition back to single out the answer."),
    ("related-solved", "Use a related solved problem",
     "Find a problem with the same unknown that you have solved before and reuse its result.",
     "Recall a problem with the same unknown that you have solved before. Reuse its result or its method "
     "directly, adjusting for what is different here."),
    ("simplify-numbers", "Simplify the numbers",
     "Replace awkward numbers with easy ones to find the method, then redo it with the real numbers.",
     "Replace the given numbers with much simpler ones and solve that easier version to find the method. "
     "Then apply the same method to the actual numbers."),
    ("units-check", "Track units and dimensions",
     "Carry the units through every step; they show which quantities may be combined and how.",
     "Write every quantity with its unit and carry the units through each step. Use the units to decide "
     "which quantities to multiply, divide or add, and check that the answer has the right unit."),
    ("estimate-first", "Estimate first",
     "Find a rough value before computing exactly; it guides and checks the exact work.",
     "First estimate the answer roughly with rounded numbers. Then compute it exactly, and compare the "
     "exact result with the estimate."),
    ("continuity", "Use continuity (Bolzano)",
     "A quantity that changes continuously from below to above a value must pass through it.",
     "Look for a quantity that changes gradually as something varies. If it is too small at one end and "
     "too large at the other, it must take the required value in between; use this to locate the answer."),
    ("parity", "Use parity",
     "Look at odd and even, or remainders, to rule out possibilities or fix the answer.",
     "Examine parity or remainders (odd/even, remainders modulo a small number) of the quantities involved "
     "and use them to rule out possibilities or determine the answer."),
    ("pigeonhole", "Use the pigeonhole principle",
     "If more items than boxes are placed, some box receives at least two.",
     "Identify the objects and the categories they fall into. If there are more objects than categories, "
     "some category must contain several; use that to reach the answer."),
    ("complement", "Count the complement",
     "Count or compute what is not wanted and subtract it from the whole.",
     "Instead of finding the wanted quantity directly, find the total and the part that is not wanted, "
     "then subtract."),
    ("recursion", "Find a recurrence",
     "Express each case in terms of smaller cases and build up from the start.",
     "Express the answer for a problem of a given size in terms of the answers for smaller sizes. Find the "
     "starting values and build up step by step to the size asked."),
    ("change-representation", "Change the representation",
     "Move the problem into another language - algebra, geometry, a graph, a table - where it is easier.",
     "Translate the problem into a different representation - algebraic, geometric, a graph, or a table - "
     "solve it there, and translate the result back."),
    ("rates-proportion", "Reason with rates and proportions",
     "Find the rate per one unit, or set up a proportion, and scale to the amount asked.",
     "Find the rate or amount per single unit, or set up a proportion between corresponding quantities, "
     "and scale it to the amount the problem asks about."),
    # ---- n = 64
    ("conservation", "Balance what goes in and out",
     "Account for every quantity entering and leaving; the totals must balance.",
     "Keep a ledger of what is added and what is removed at each step. Use the fact that the totals must "
     "balance to find the unknown."),
    ("working-forwards", "Work forwards systematically",
     "From the data, derive every consequence in order until the unknown appears.",
     "Start from the given data and derive, in order, every quantity that follows directly from it. Keep "
     "going until the unknown is among the derived quantities."),
    ("subgoal", "Set a subgoal",
     "Pick an intermediate result that would make the rest easy and aim for it first.",
     "Choose an intermediate result that, once known, would make the final answer easy to reach. Find that "
     "intermediate result first, then finish the problem."),
    ("reformulate-question", "Ask a different question",
     "Replace the question by an equivalent one that is easier to answer.",
     "Find an equivalent question that is easier to answer - for example asking for a difference instead of "
     "two values, or for a count of what is left. Answer it and translate back."),
    ("organized-list", "Make an organized list",
     "List all possibilities in a systematic order so that none is missed or counted twice.",
     "List all the possibilities in a systematic order so that none is missed and none is repeated. Use "
     "the complete list to find the answer."),
    ("elimination", "Eliminate possibilities",
     "Rule out candidates that violate a condition until only the answer remains.",
     "Write down the candidate answers and remove each one that violates a condition of the problem. The "
     "candidate that survives every condition is the answer."),
    ("inverse-operation", "Undo the operations",
     "Reverse each operation in turn to recover the starting value.",
     "Identify the sequence of operations applied in the problem and undo them one by one, in reverse "
     "order, to recover the value that is asked for."),
    ("factor-structure", "Look at the structure of the numbers",
     "Factor, decompose into place values or prime factors, and let the structure do the work.",
     "Look at the structure of the numbers involved - factor them, write them by place value or as prime "
     "products - and use that structure to simplify the problem."),
    ("substitution", "Substitute to simplify",
     "Replace a complicated expression with a single new variable.",
     "Find a complicated expression that appears in the problem and replace it by a single new variable. "
     "Solve the simpler problem in that variable and substitute back."),
    ("monotonicity", "Use monotonicity",
     "If a quantity only grows (or only shrinks), the target value is crossed once; search for it.",
     "Notice how the relevant quantity changes as a parameter grows: if it only increases or only "
     "decreases, search for the parameter value that gives exactly what is required."),
    ("bounding", "Bound the answer",
     "Find an upper and a lower bound and squeeze them together.",
     "Find a lower bound and an upper bound for the unknown, then tighten them until they meet at the answer."),
    ("average-argument", "Reason about averages",
     "Use the mean or a balancing point to relate totals and individual values.",
     "Relate the total to the number of items through the average, and use that relation - and how items "
     "deviate from the average - to find the answer."),
    ("coordinates", "Introduce coordinates",
     "Place the objects on axes or a number line and compute.",
     "Place the objects of the problem on a number line or in a coordinate system, give each point "
     "coordinates, and compute the answer from them."),
    ("generating-cases-table", "Tabulate the states",
     "Write a table of how the state evolves step by step.",
     "Make a table with one row per step that records the state of every relevant quantity. Fill it in "
     "step by step until the row the problem asks about."),
    ("two-ways-count", "Count in two ways",
     "Compute the same quantity in two different ways and equate the results.",
     "Express the same quantity in two different ways and set the two expressions equal. Solve the "
     "resulting relation for the unknown."),
    ("telescoping", "Telescope a sum or product",
     "Write terms as differences or ratios so that most of them cancel.",
     "Rewrite each term as a difference (or ratio) of consecutive expressions so that most terms cancel "
     "when added (or multiplied), and evaluate what remains."),
    ("worst-case", "Reason about the worst case",
     "Consider how an adversary would choose, to find what is guaranteed.",
     "Imagine the least favourable way things could go, and find what is still guaranteed in that case. "
     "That guarantee is the answer."),
    ("reduce-to-known", "Reduce to a known result",
     "Transform the problem until a standard formula or theorem applies.",
     "Transform the problem step by step until it matches a standard formula, identity or theorem, then "
     "apply that result."),
    ("separate-variables", "Separate what changes from what stays",
     "Distinguish constant quantities from varying ones and treat each group on its own.",
     "Separate the quantities that stay fixed from those that change. Handle the fixed part once and then "
     "deal with the changing part."),
    ("modular-reasoning", "Work modulo a number",
     "Reduce the problem to remainders to answer questions about divisibility or last digits.",
     "Reduce the relevant quantities modulo a well-chosen number and work with remainders to answer the "
     "question about divisibility, cycles or last digits."),
    ("cycle-detection", "Find the cycle",
     "When a process repeats, find its period and jump ahead.",
     "Run the process for a few steps until it repeats. Find the length of the cycle and use it to jump "
     "directly to the step the problem asks about."),
    ("scaling", "Scale the problem",
     "Multiply or divide everything by a convenient factor, solve, then scale back.",
     "Scale all quantities by a convenient factor so the numbers become easy, solve the scaled problem, "
     "then scale the result back."),
    ("partition-whole", "Split the whole into parts",
     "Express a total as a sum of parts whose sizes are easier to find.",
     "Express the whole as a sum of parts whose sizes are easier to find. Find each part and add them up."),
    ("ratio-reasoning", "Reason with ratios and parts",
     "Write the ratio as a number of equal parts and find the size of one part.",
     "Write the ratio between the quantities as a number of equal parts, find the size of one part from "
     "the data, and compute the requested quantity."),
    ("check-special-values", "Test the answer on special values",
     "Check a general formula on simple values where the answer is known.",
     "Derive the answer as a formula, then test the formula on simple special values where you know the "
     "result, before applying it to the actual data."),
    ("consider-difference", "Look at differences",
     "Study how consecutive values differ, or how two quantities differ, instead of the values themselves.",
     "Instead of the quantities themselves, study their differences - between consecutive terms or between "
     "two related quantities - and use those differences to find the answer."),
    ("time-reversal", "Replay the process in reverse time",
     "Describe the final state and run the story backwards in time.",
     "Describe the final state the problem gives, then replay the story backwards in time, step by step, "
     "until you reach the state that is asked for."),
    ("intermediate-value-search", "Search by halving",
     "Halve the range of possible answers repeatedly, testing the middle each time.",
     "Determine a range that must contain the answer. Test the middle of the range against the conditions "
     "and discard the half that cannot contain the answer; repeat until the answer is found."),
    ("dual-viewpoint", "Take another viewpoint",
     "Look at the situation from another participant's or object's point of view.",
     "Look at the situation from a different point of view - another participant, the other object, or "
     "the opposite direction - and solve it from that viewpoint."),
    ("weighted-combination", "Combine weighted contributions",
     "Treat the result as a weighted sum of contributions and find each weight.",
     "Treat the answer as a combination of contributions, each with its own weight or rate. Find each "
     "contribution and its weight, then combine them."),
    ("necessary-conditions", "Derive necessary conditions",
     "Ask what must be true of any answer, and let those conditions narrow it down.",
     "Before searching for the answer, derive conditions any answer must satisfy (size, sign, parity, "
     "divisibility). Use them to narrow the candidates, then find the answer among them."),
    ("simulate", "Simulate step by step",
     "Carry out the process literally, one step at a time, keeping careful records.",
     "Carry out the process described in the problem literally, one step at a time, writing down the state "
     "after each step, until you reach the result."),
]

CATALOGUE: tuple[Heuristic, ...] = tuple(Heuristic(*row) for row in _ROWS)
CATALOGUE_IDS: tuple[str, ...] = tuple(h.id for h in CATALOGUE)
BY_ID: dict[str, Heuristic] = {h.id: h for h in CATALOGUE}
#: the set sizes the catalogue is ordered for
NESTED_SIZES = (1, 4, 8, 16, 32, 64)

assert len(CATALOGUE) == 64 and len(BY_ID) == 64, "the catalogue must hold 64 distinct heuristics"


def select(count: int | None = None, names: Sequence[str] | None = None) -> list[Heuristic]:
    """The first ``count`` heuristics, or the named ones in the order given."""
    if names is not None:
        missing = [n for n in names if n not in BY_ID]
        if missing:
            raise KeyError(f"unknown heuristic id(s): {missing}")
        return [BY_ID[n] for n in names]
    if count is None or not 1 <= count <= len(CATALOGUE):
        raise ValueError(f"count must be in 1..{len(CATALOGUE)}, got {count}")
    return list(CATALOGUE[:count])


# ------------------------------------------------------------------------------------------- prompts
SYSTEM_PROMPT = "You are a careful mathematician. Reason step by step and end with the final answer in \\boxed{}."
ANSWER_FORMAT = "Put the final answer alone inside \\boxed{} at the end."

#: the optional worked example (few-shot): it teaches the answer format, it is heuristic-neutral in content
WORKED_EXAMPLE_QUESTION = "A box holds 6 rows of 4 eggs. 5 eggs break. How many eggs are left?"
WORKED_EXAMPLE_ANSWER = "19"


def _worked_solution(heuristic: Heuristic | None) -> str:
    lead = f"Using the approach \"{heuristic.name}\": " if heuristic else ""
    return (
        f"{lead}The box holds 6 x 4 = 24 eggs. After 5 break, 24 - 5 = 19 eggs are left.\n"
        f"\\boxed{{{WORKED_EXAMPLE_ANSWER}}}"
    )


def _user_turn(question: str, heuristic: Heuristic | None) -> str:
    if heuristic is None:
        return f"Solve the problem.\n\nProblem: {question}\n\n{ANSWER_FORMAT}"
    return (
        f"Solve the problem with this approach - {heuristic.name}: {heuristic.instruction}\n\n"
        f"Problem: {question}\n\n{ANSWER_FORMAT}"
    )


def build_messages(question: str, heuristic: Heuristic | None = None, few_shot: bool = True) -> list[dict[str, str]]:
    """OpenAI-style chat messages asking to solve ``question`` with ``heuristic`` (None: no heuristic)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if few_shot:
        messages.append({"role": "user", "content": _user_turn(WORKED_EXAMPLE_QUESTION, heuristic)})
        messages.append({"role": "assistant", "content": _worked_solution(heuristic)})
    messages.append({"role": "user", "content": _user_turn(question, heuristic)})
    return messages


def render_prompt(tokenizer: Any, question: str, heuristic: Heuristic | None = None, few_shot: bool = True) -> str:
    """The prompt text through the model's own chat template (generation prompt appended)."""
    messages = build_messages(question, heuristic, few_shot)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # a base model without a template: a plain transcript
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def describe(heuristic: Heuristic) -> str:
    """Text a judge or encoder compares a trace against."""
    return f"{heuristic.name}: {heuristic.description}"
