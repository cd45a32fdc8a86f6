"""
Tests of verify.py: each normalisation and comparison rule with equal AND unequal cases (answer styles taken from the
data files), answer extraction, the data-wide checks (every gold answer against itself, MATH500 solutions against
their answers and against shuffled answers), pathological input under the time limit, and the command line
(grade_batch's worker processes: test_grading.py; the reward formula: test_train.py's score tests).

    .venv/bin/python -m pytest -q tests/test_verify.py
"""

import json
import random
import subprocess
import sys
import threading
import time
from fractions import Fraction

import pytest
from conftest import REPO, shared_path

from mathrl import verify
from mathrl.grading import grade_batch
from mathrl.verify import extract_answer, grade, is_equivalent

# ----------------------------------------------------------------------------------------------------------------------
# Equivalence rules: (prediction, gold)

EQUAL = [
    # fractions, decimals, \dfrac / \tfrac / \frac12 shorthand, mixed numbers, repeating decimals
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "\\frac34"),
    ("\\tfrac{3}{4}", "3/4"),
    ("-\\tfrac32", "-1.5"),
    ("\\frac 9{20}", "0.45"),
    ("\\frac{-2}{3}", "-\\frac{2}{3}"),
    ("3\\frac{1}{2}", "\\frac{7}{2}"),
    ("0.\\overline{3}", "\\frac{1}{3}"),
    ("0.0000672", ".0000672"),
    ("142.0", "142"),
    ("025", "25"),
    ("5.", "5"),
    # delimiters, \left/\right, spacing commands, \boxed wrapper
    ("$\\frac{7}{15}$", "\\frac{7}{15}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\left[0,\\frac{343}{27}\\right]", "[0, 343/27]"),
    ("2\\,\\sqrt{3}", "2\\sqrt3"),
    ("x\\!+\\!1", "x + 1"),
    ("3 \\quad", "3"),
    ("\\boxed{5}", "5"),
    ("\\displaystyle\\frac{1}{4}", "0.25"),
    # text wrappers, units, dollars, degrees, percent
    ("\\text{5}", "5"),
    ("5\\text{ cm}", "5"),
    ("12 \\mbox{ inches}", "12"),
    ("6\\text{ cm}^2", "6"),
    ("180\\text{ miles}", "180"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("\\$18.90", "18.9"),
    ("1.5 dollars", "\\$1.50"),
    ("90^\\circ", "90"),
    ("90", "90^{\\circ}"),
    ("45 degrees", "45^\\circ"),
    ("30°", "30"),
    ("20\\%", "20"),
    ("20\\%", "0.2"),
    ("0.2", "20\\%"),
    ("62.5\\%", "\\frac{5}{8}"),
    ("5 apples", "5"),
    ("9.6 \\mathrm{~s}", "9.6"),
    ("7.5 \\times 10^7 \\text{ m/s}", "7.5e7"),
    ("6.43 \\times 10^{16} \\text{ cm}^{-3}", "6.43e16"),
    # thousands separators (a list "1,2" stays a list)
    ("10,\\!080", "10080"),
    ("32,\\!000,\\!000", "32000000"),
    ("1,000,000", "1000000"),
    ("1{,}000", "1000"),
    ("1,2", "1, 2"),
    ("2, 1", "1,2"),
    # equations and "x =" prefixes
    ("x = 5", "5"),
    ("5", "x=5"),
    ("k = 1", "1"),
    ("x=-10", "-10"),
    ("y = 2x + 3", "2x+3"),
    ("2x+3", "y=2x+3"),
    ("f(x) = x^2", "x^2"),
    ("\\frac{9}{32}\\sqrt{2}", "M=\\frac{9}{32} \\sqrt{2}"),
    ("y=-\\frac{1}{2}x+3", "y = 3 - \\frac{x}{2}"),
    ("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0"),
    ("x = 5", "2x = 10"),
    ("x=1 \\text{ or } x=-2", "1,-2"),
    ("f(n)=n, g(n)=1", "$f(n)=n$, $g(n)=1$"),
    # inequalities and intervals
    ("x > 3", "3 < x"),
    ("x \\ge 3", "[3, \\infty)"),
    ("x > 3", "(3,\\infty)"),
    ("2 \\le x < 5", "[2,5)"),
    ("x<-2 \\text{ or } x>3", "(-\\infty,-2)\\cup(3,\\infty)"),
    ("x \\in [2, 5]", "[2,5]"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)"),
    ("x \\in (-\\infty, -8) \\cup (8, \\infty)", "(-\\infty,-8)\\cup (8,\\infty)"),
    ("\\mathbb{R}", "(-\\infty, \\infty)"),
    ("(3,4]", "\\left(3, 4\\right]"),
    # tuples (ordered), sets and lists (unordered), \pm
    ("(1, 2)", "(1,2)"),
    ("\\left(2, -\\frac{13}{7}, -\\frac{4}{7}\\right)", "(2,-13/7,-4/7)"),
    ("\\{1, 2, 3\\}", "3, 2, 1"),
    ("3, 5, 7", "7,5,3"),
    ("-\\frac{2 \\pi}{3}, 0, \\frac{2 \\pi}{3}", "0, \\frac{2\\pi}{3}, -\\frac{2\\pi}{3}"),
    ("(1,8,19), (2,7,13), (4,5,7)", "(4,5,7),(1,8,19),(2,7,13)"),
    ("2, -1", "(2,-1)"),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
    ("\\emptyset", "\\{\\}"),
    ("-12 \\text{ or } -30", "-30, -12"),
    ("2, 3, \\text{ and } 4", "4, 3, 2"),
    # matrices and vectors
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\\\ \\frac53 \\end{pmatrix}",
    ),
    ("(-10, -35, 30)", "\\begin{pmatrix} -10 \\\\ -35 \\\\ 30 \\end{pmatrix}"),
    # roots, pi, logs, factorials, binomials
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\sqrt[3]{27}", "3"),
    ("\\sqrt[3]{-8}", "-2"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("1/\\sqrt{3}", "\\frac{\\sqrt 3}{3}"),
    ("\\sqrt{2}\\cdot\\sqrt{3}", "\\sqrt6"),
    ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}"),
    ("\\frac{\\sqrt{20201}-1}{4}", "\\frac{-1+\\sqrt{20201}}{4}"),
    ("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\pi/6", "\\frac{\\pi}{6}"),
    ("2\\pi", "2 \\pi"),
    ("\\pi r^2", "r^2\\pi"),
    ("\\log_2 8", "3"),
    ("\\ln e^2", "2"),
    ("\\binom{5}{2}", "10"),
    ("5!", "120"),
    ("\\frac{100!}{2^{50}}", "\\frac{100!}{2^{50}}"),
    ("2^{2008}-2", "-2+2^{2008}"),
    ("\\tan^{-1} 1", "\\frac{\\pi}{4}"),
    ("\\max(3, 5)", "5"),
    ("\\gcd(12, 18)", "6"),
    ("x²+1", "x^2+1"),
    ("2√3", "\\sqrt{12}"),
    ("(-inf, 3)", "(-\\infty, 3)"),
    ("\\arcsin{\\frac{1}{1.3}}", "\\arcsin{\\frac{10}{13}}"),
    # complex numbers (i is the imaginary unit)
    ("6 - 5i", "-5i+6"),
    ("\\frac{1+i}{2}", "0.5+0.5i"),
    ("\\sqrt{-4}", "2i"),
    ("e^{i\\pi}", "-1"),
    # scientific notation
    ("6 \\times 10^{23}", "6e23"),
    ("6.02\\times10^{23}", "6.02 \\cdot 10^{23}"),
    ("1e-3", "10^{-3}"),
    ("3.5 \\times 10^{-2}", "0.035"),
    ("8.7 \\times 10^{8}", "870000000"),
    # expressions with variables
    ("x^2 - 1", "(x-1)(x+1)"),
    ("(a+5)(b+2)", "(b+2)(a+5)"),
    ("\\frac{x}{2}", "0.5x"),
    ("2k+2", "2(k+1)"),
    ("p - q", "-q + p"),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("x^{1/2}", "\\sqrt{x}"),
    ("\\alpha + \\beta", "\\beta+\\alpha"),
    ("a_1 + a_2", "a_{2}+a_{1}"),
    ("\\frac{1}{2 n+2}", "\\frac{1}{2(n+1)}"),
    ("\\sqrt{x^2}", "|x|"),
    ("(x-1)^2+(y-2)^2=4", "x^2-2x+y^2-4y+1=0"),
    ("\\frac{n(n+1)}{2}", "\\binom{n+1}{2}"),
    ("\\cos^2 x - \\sin^2 x", "\\cos 2x"),
    ("m n-\\lfloor m / 2\\rfloor", "mn - \\left\\lfloor \\frac{m}{2} \\right\\rfloor"),
    ("\\binom{2n}{n}", "\\frac{(2n)!}{(n!)^2}"),
    ("I(0)e^{-t/RC}", "I(0) e^{-\\frac{t}{R C}}"),  # juxtaposition binds tighter than "/"; I(0) is a value of I
    ("1/2\\pi", "\\frac{1}{2\\pi}"),
    ("x - x", "0"),
    # bases, ratios, multiple choice, words, clock times
    ("52_8", "52_{8}"),
    ("52", "52_8"),
    ("42_8", "34"),
    ("(x, y) = (1, 2)", "(1, 2)"),
    ("0.0011_{2}", "0.0011_2"),
    ("1:4", "2:8"),
    ("\\text{(B)}", "B"),
    ("(B)", "\\textbf{(B)}"),
    ("\\textbf{(C)} 12", "C"),
    ("B", "\\text{(B) } 4"),
    ("4", "\\textbf{(B) }4"),
    ("C, A", "\\text{A,C}"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{east}", "East"),
    ("\\text{4:30 p.m.}", "4:30 PM"),
    # labels: a left side made of names only (no numbers) names the value; a chain ends in its result
    ("|AB| = 1", "1"),
    ("V_1:V_2 = 11:21", "11:21"),
    ("S_{MBCN}:S = 7:32", "7:32"),
    ("\\frac{NO}{BO} = \\frac{1}{\\sqrt 6}", "\\frac{\\sqrt6}{6}"),
    ("a+b = 7", "7"),
    ("\\angle ABC = 30^\\circ", "30"),
    ("A^{-1} = \\begin{pmatrix}1&0\\\\0&2\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&2\\end{pmatrix}"),
    ("S = 3 + 4 = 7", "7"),
    ("\\binom{6}{2} = 15", "15"),  # a true computation states its result
    ("\\gcd(84, 126) = 42", "42"),
    ("\\tan\\theta = \\frac34", "0.75"),
    ("e = \\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),  # e names an eccentricity here
    ("\\text{Area} = 25", "25"),
    ("f^{-1}(x) = 2x + 1", "2x+1"),
    ("x=0, x=2, x=-2", "0, \\pm 2"),  # \pm inside a list
    ("x_1=\\frac{1+\\sqrt5}{2}, x_2=\\frac{1-\\sqrt5}{2}", "\\frac{1\\pm\\sqrt5}{2}"),  # \pm inside a fraction
    ("\\{x \\mid x > 2\\}", "(2, \\infty)"),  # set-builder notation
    ("D: 36", "D"),
    ("\\textbf{(D) } 6", "6"),  # a predicted option with its value, against a gold value
    ("\\{1\\} \\cup \\{2, 3\\}", "\\{3, 2, 1\\}"),  # a union of finite sets
    ("\\left\\{\\begin{array}{l} x = 1 \\\\ y = 2 \\end{array}\\right.", "(1, 2)"),  # a system's solution
    ("\\begin{cases} x = 1 \\\\ y = 2 \\end{cases}", "(1, 2)"),
    ("k\\pi + \\frac{\\pi}{4}, k \\in \\mathbb{Z}", "\\frac{\\pi}{4} + k\\pi"),  # the index's qualifier
    ("11:21", "\\frac{11}{21}"),
    ("p = 5, q = 2; p = 7, q = 2", "(5, 2), (7, 2)"),
    # \approx: what follows it approximates what precedes
    ("\\frac{\\sqrt{3}}{3} \\approx 0.577", "\\frac{\\sqrt3}{3}"),
    ("x = \\sqrt2 \\approx 1.414", "\\sqrt 2"),
    ("x \\approx 3.5", "x = 3.5"),
    ("24000 \\cdot 1.01^{30} \\approx 32348", "32348"),  # a correct rounding matches a rounded gold
    ("\\sin 30^\\circ", "\\frac12"),  # degrees inside a trigonometric function
    ("\\frac{\\sin 20^\\circ - \\sin 40^\\circ}{\\sin 10^\\circ}", "-\\sqrt3"),
    ("{8 \\choose 2}", "28"),
    ("36 - 7 - 2 - 10 = 17 = x", "17"),  # a chain that ends by naming its value
    # relations in one variable as sets: affine sides solved, |x| unfolded, a named quantity's range
    ("1 \\le |z| \\le \\frac32", "[-\\frac32, -1] \\cup [1, \\frac32]"),
    ("0 < f(x) < 1", "(0, 1)"),
    ("m \\geq \\sqrt 2", "[\\sqrt 2, +\\infty)"),
    ("-x > -1", "x < 1"),
    ("2x - 4 \\ge 0", "[2, \\infty)"),
    ("1 < 2x + 1 < 5", "(0, 2)"),
    ("2x > x + 1", "x > 1"),
    ("|x| < 3", "(-3, 3)"),
    ("|x| > 1", "(-\\infty,-1)\\cup(1,\\infty)"),
    ("x \\neq 2", "(-\\infty, 2) \\cup (2, \\infty)"),
    ("x \\lt 3", "(-\\infty, 3)"),
    ("x \\geq 5", "x >= 5"),
    ("x != 2", "x \\neq 2"),
    ("x!=2", "x \\neq 2"),
    ("2\\cdot5!=240", "240"),  # after a number, "!=" is a factorial and "="
    ("x ≠ 2", "x \\ne 2"),
    ("\\num{1234}", "1234"),
    ("25^\\circ C", "25"),
    ("\\frac{\\pi}{2}", "90^\\circ"),  # degrees also read in radians
    ("60°", "\\frac{\\pi}{3}"),
    ("\\angle ACB = 45^\\circ", "\\frac{\\pi}{4}"),
    ("（1，2）", "(1, 2)"),  # full-width brackets and comma
    ("x ⩽ 3", "(-\\infty, 3]"),
    ("\\text{all real numbers}", "(-\\infty, \\infty)"),
    # number formats: decimal comma where it cannot be a thousands separator, stray backslashes, unicode roots
    ("1000,99", "1000.99"),
    ("0,111", "0.111"),
    ("2,74", "2.74"),
    ("2{,}5", "2.5"),
    ("14{,}916", "14916"),
    ("12,345", "12345"),
    ("25\\", "25"),
    ("25\\\\", "25"),
    ("√12", "2\\sqrt3"),
    # a choice letter with its option written out
    ("C. x = 42", "C"),
    ("B)", "B"),
    # fractional powers of negative numbers are real roots, like \sqrt[3]{}
    ("\\sqrt[3]{x^2-2}^2", "(x^2-2)^{2/3}"),
    ("(x-3)^{1/3}", "\\sqrt[3]{x-3}"),
    ("(-8)^{2/3}", "4"),
    ("\\sqrt{2}\\sqrt[3]{2}", "2^{5/6}"),
    # decimals within the 1e-6 relative tolerance (policy: only when neither side is an integer)
    ("0.3333333", "\\frac13"),
    ("\\pi", "3.14159265"),  # a gold decimal states the precision asked for
    ("\\sqrt{2}", "1.4142136"),
    # an integer-index qualifier after \\pi (the i of \\pi is no variable), an index's range after "for"/"where"
    ("x = \\frac{\\pi}{4} + k\\pi, k \\in \\mathbb{Z}", "\\frac{\\pi}{4}+k\\pi"),
    ("n = 2^k \\text{ for } k \\geq 0", "2^k"),
    # physics units of several letters after a number
    ("0.25 eV", "0.25"),
    ("\\text{The answer is } 12", "12"),  # a box that repeats the answer phrase
    # an interval less one point inside it is the union of its halves
    ("(0, 1) \\cup (1, 2)", "(0,2)\\setminus\\{1\\}"),
    ("\\mathbb{R} \\setminus \\{0\\}", "(-\\infty,0)\\cup(0,\\infty)"),
    ("[0,2]\\setminus\\{1\\}", "[0,1)\\cup(1,2]"),
    ("\\textbf{(B)}\\ 17", "\\textbf{(B) }17"),
    ("500 nm", "500"),
    # a mixed number in plain text (as "4\\frac{4}{9}" is one)
    ("4 4/9", "\\frac{40}{9}"),
    ("-2 1/3", "-\\frac{7}{3}"),
    # a degree mark inside a trigonometric function's argument makes its number radians
    ("\\sin(90^\\circ - x)", "\\cos x"),
    ("\\cos\\left(180^\\circ - x\\right)", "-\\cos x"),
    # one function named f(x), g(x) or y
    ("f(x) = x^2 + 1", "y = x^2 + 1"),
    ("y = 2x - 3", "g(x) = 2x - 3"),
    # a true identity whose inner values are huge or tiny is confirmed at a precision that can see the difference
    ("2^{2^{-1000}}", "2^{1/2^{1000}}"),
    ("\\sqrt{2}^{400}", "2^{200}"),
    # a gold clock reading past 12 is on a 24-hour clock
    ("8:34 PM", "20:34"),
    ("12:15 AM", "00:15"),
    # a multiple-choice gold written as a list item with the option's text: its letter or its value
    ("B", "B. 12"),
    ("12", "B) 12"),
    ("0.5", "C. $\\frac{1}{2}$"),
]

NOT_EQUAL = [
    # rounded decimals are not exact values (tolerance 1e-6 relative, and integers are exact)
    ("3.14", "\\pi"),
    ("3.14159265", "\\pi"),  # a predicted decimal for an exact irrational gold, however precise
    ("1.4142136", "\\sqrt{2}"),
    ("0.5773503", "\\frac{\\sqrt3}{3}"),
    ("3.1416", "\\pi"),
    ("0.33", "\\frac13"),
    ("0.333", "1/3"),
    ("1.41", "\\sqrt2"),
    ("3986730", "3986729"),
    ("8178.0001", "8178"),
    ("0.0001", "0"),
    ("1 + e^{-100}", "1"),
    # plain wrong numbers and expressions
    ("2", "-2"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("2^{10}", "1000"),
    ("1e3", "100"),
    ("6\\times10^{23}", "6\\times10^{22}"),
    ("4.5e33", "4.5e32"),
    ("x^2", "x^3"),
    ("x + 1", "x - 1"),
    ("5", "5x"),
    ("x^2+2x+1", "(x+1)^3"),
    ("\\frac{x}{2}", "\\frac{2}{x}"),
    ("\\sin x", "\\cos x"),
    ("p+q", "p-q"),
    ("\\sin(x)^{100}", "\\sin(x)^{100}+\\cos(x)^{200}"),
    ("\\lceil n/2 \\rceil - 1", "\\lfloor n/2 \\rfloor"),
    ("x", "|x|"),
    ("I(0)e^{t/RC}", "I(0) e^{-\\frac{t}{R C}}"),
    ("1/2x", "\\frac{x}{2}"),
    ("0 \\cdot x + y(0)", "0 \\cdot y"),
    ("(-1)^n", "\\cos(n\\pi)"),
    ("2^{n+1}", "2^n"),
    ("\\frac{10^{100}+1}{10^{100}}", "1"),
    ("1267650600228229401496703205377", "2^{100}"),
    ("2\\mathrm{i}", "2"),
    ("2\\frac{1}{2}", "1"),
    ("3 n", "3"),
    ("2+3i", "2-3i"),
    ("-i", "i"),
    ("\\infty", "-\\infty"),
    ("\\frac{1}{0}", "\\infty"),
    # thousands vs lists
    ("1,000", "1"),
    ("1,2", "12"),
    ("12", "1, 2"),
    # tuples are ordered, intervals keep their brackets, sets need the same elements
    ("(1, 2)", "(2, 1)"),
    ("(0, 1]", "(0, 1)"),
    ("[0, 1)", "(0, 1)"),
    ("(-\\infty,2)", "(-\\infty,2]"),
    ("x \\in [2,5]", "[2,5)"),
    ("1, 2", "1, 2, 3"),
    ("2", "2, 3"),
    ("\\{1,2\\}", "(1,2)"),
    ("(1,2)", "1"),
    ("1 + \\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "(1,2,3,4)"),
    # equations and inequalities
    ("x = 5", "y = 5"),
    ("y = 2x+3", "y = 2x-3"),
    ("y=2x+3", "x=2y+3"),
    ("x^2 = 1", "x = 1"),
    ("x > 3", "x \\ge 3"),
    ("x > 3", "[3, \\infty)"),
    ("x=1, y=2", "(2,1)"),
    # degrees and radians: only a side written in degrees has the radian reading; numerals keep their base
    ("\\frac{\\pi}{3}", "90^\\circ"),
    ("\\frac{\\pi}{2}", "90"),
    ("1.5708", "90^\\circ"),  # a decimal for the exact pi/2 reading
    ("\\angle ACB = 45^\\circ", "\\frac{\\pi}{3}"),
    ("34", "42_8"),
    ("52_8", "52"),
    ("[1, 2]", "1, 2"),
    ("(x, y) = (2, 1)", "(1, 2)"),
    ("42_8", "42_9"),
    ("1:4", "1:3"),
    # multiple choice and words
    ("(A)", "B"),
    ("A", "\\text{(C)}"),
    ("\\textbf{(C)} 12", "B"),
    ("5", "\\text{(B) } 4"),
    ("(C)", "\\text{(B) } 4"),
    ("12", "C"),
    ("\\text{Evelyn}", "Eve"),
    ("\\text{odd}", "\\text{even}"),
    ("\\text{nylevE}", "\\text{Evelyn}"),
    ("4:30", "\\text{4:30 p.m.}"),
    # labels: the twins of the rules above, and an equation with a number on the left is not a label
    ("|AB| = 2", "1"),
    ("V_1:V_2 = 11:20", "11:21"),
    ("S_{MBCN}:S = 7:33", "7:32"),
    ("\\frac{NO}{BO} = \\frac{1}{\\sqrt 5}", "\\frac{\\sqrt6}{6}"),
    ("a+b = 8", "7"),
    ("\\angle ABC = 60^\\circ", "30"),
    ("A^{-1} = \\begin{pmatrix}1&0\\\\0&3\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&2\\end{pmatrix}"),
    ("S = 3 + 4 = 8", "7"),
    ("\\binom{6}{2} = 16", "16"),  # a false computation states no answer
    ("\\gcd(84, 126) = 42", "84"),
    ("\\tan\\theta = \\frac43", "0.75"),
    ("e = \\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt3}{2}"),
    ("\\text{Area} = 24", "25"),
    ("f^{-1}(x) = 2x + 1", "2x-1"),
    ("x=0, x=2, x=-1", "0, \\pm 2"),
    ("x=0, x=2", "0, \\pm 2"),
    ("x_1=\\frac{1+\\sqrt5}{2}, x_2=\\frac{-1-\\sqrt5}{2}", "\\frac{1\\pm\\sqrt5}{2}"),
    ("\\{x \\mid x > 3\\}", "(2, \\infty)"),
    ("D: 36", "A"),
    ("A:B", "A"),  # a ratio of two names is no choice letter
    ("\\textbf{(D) } 6", "7"),
    ("\\{1\\} \\cup \\{3\\}", "\\{1, 2\\}"),
    ("\\left\\{\\begin{array}{l} x = 1 \\\\ y = 2 \\end{array}\\right.", "(2, 1)"),
    ("\\begin{cases} x = 1 \\\\ y = 3 \\end{cases}", "(1, 2)"),
    ("k\\pi + \\frac{\\pi}{4}, k \\in \\mathbb{Z}", "\\frac{\\pi}{4} + 2k\\pi"),
    ("x \\in \\mathbb{R}", "(0, \\infty)"),  # a qualifier over the reals is an answer, never stripped
    ("11:21", "\\frac{21}{11}"),
    ("p = 5, q = 2; p = 7, q = 3", "(5, 2), (7, 2)"),
    ("p = 5, q = 2; p = 7, q = 2", "(2, 5), (2, 7)"),
    ("2x = 10", "10"),
    ("x^2 = 4", "4"),
    # an approximation is not the exact value, and the exact value is not its approximation
    ("\\frac{\\sqrt{2}}{3} \\approx 0.471", "\\frac{\\sqrt3}{3}"),
    ("0.577", "\\frac{\\sqrt3}{3}"),
    ("\\frac{\\sqrt{3}}{3} \\approx 0.577", "0.578"),
    ("\\frac{\\sqrt{2}}{3} \\approx 0.577", "0.577"),  # the approximation of a wrong value
    ("24000 \\cdot 1.01^{30} \\approx 32349", "32349"),  # a wrong rounding
    ("\\sin 30^\\circ", "\\frac{\\sqrt3}{2}"),
    ("{8 \\choose 3}", "28"),
    ("36 - 7 - 2 - 10 = 17 = x", "16"),
    ("1 + 1 = 3 = x", "3"),  # a false computation before the name states nothing
    # relations as sets: twins
    ("1 \\le |z| \\le 2", "[-\\frac32, -1] \\cup [1, \\frac32]"),
    ("0 < f(x) \\le 1", "(0, 1)"),
    ("m > \\sqrt 2", "[\\sqrt 2, +\\infty)"),
    ("-x > -1", "x > 1"),
    ("2x - 4 \\ge 0", "[4, \\infty)"),
    ("1 < 2x + 1 < 5", "(1, 5)"),
    ("2x > x + 1", "x < 1"),
    ("|x| < 3", "(-3, 3]"),
    ("|x| > 1", "(-1, 1)"),
    ("x \\neq 2", "x \\neq 3"),
    ("x != 2", "x \\neq 3"),
    ("3! = 6", "3"),  # a factorial before "=" is still a factorial
    ("25^\\circ C", "26"),
    ("（1，2）", "(2, 1)"),
    ("x ⩽ 3", "(-\\infty, 3)"),
    ("\\text{all real numbers}", "(0, \\infty)"),
    ("\\text{all real numbers}", "\\text{all integers}"),
    ("x^2 < 4", "(-2, 2)"),  # not affine: not solved (a known limit), never guessed
    # number formats: twins; a list with a space after the comma is a list
    ("1000,99", "100099"),
    ("0,111", "111"),
    ("2,74", "274"),
    ("2,74", "2.75"),
    ("1.3", "1,3"),  # a gold "1,3" is a list (the data's convention), only a predicted comma may be decimal
    ("2{,}5", "25"),
    ("1, 234", "1234"),
    ("14{,}916", "14.916"),
    ("√13", "2\\sqrt3"),
    ("C. x = 42", "B"),
    ("B)", "C"),
    # fractional powers: twins
    ("\\sqrt[3]{x^2-2}", "(x^2-2)^{2/3}"),
    ("(x-3)^{1/3}", "\\sqrt[3]{x+3}"),
    ("(-8)^{2/3}", "-4"),
    ("\\sqrt{2}\\sqrt[3]{2}", "2^{6/5}"),
    ("x = \\frac{\\pi}{4} + 2k\\pi, k \\in \\mathbb{Z}", "\\frac{\\pi}{4}+k\\pi"),
    ("n = 3^k \\text{ for } k \\geq 0", "2^k"),
    ("a + b > 0", "a"),  # a range qualifier needs its "for": this inequality is the answer
    ("0.52 eV", "0.25"),
    ("\\text{The answer is } 21", "12"),
    ("(0, 1) \\cup (1, 3)", "(0,2)\\setminus\\{1\\}"),
    ("\\mathbb{R} \\setminus \\{1\\}", "(-\\infty,0)\\cup(0,\\infty)"),
    ("[0,2]\\setminus\\{1\\}", "[0,1]\\cup[1,2]"),
    ("(0,2)\\setminus\\{5\\}", "(0,5)\\cup(5,2)"),  # a point outside: no halves
    ("\\textbf{(B)}\\ 17", "\\textbf{(A) }17"),  # a predicted option names its letter: another letter is wrong
    # false twins of the rules for mixed numbers, trigonometric degrees, function names, precision, clocks, options
    ("4 4/9", "\\frac{16}{9}"),  # not the product 4 * 4/9
    ("4 9/4", "\\frac{25}{4}"),  # a whole number and an improper fraction: no mixed number
    ("\\sin(90^\\circ - x)", "\\sin x"),
    ("\\sin(90 - x)", "\\cos x"),  # no degree mark: 90 radians
    ("f(x) = x^2 + 2", "y = x^2 + 1"),
    ("x = 5", "y = 5"),  # two unknowns, not one function
    ("2^{1/2^{1000}}", "1"),  # 1 + 2^{-1000} ln 2: the difference hides below 400 bits
    ("1", "e^{2^{-1000}}"),
    ("08:34 A.M.", "20:34"),
    ("12:15 PM", "00:15"),
    ("C", "B. 12"),
    ("13", "B) 12"),
    ("(A) 12", "B. 12"),
    ("3nm", "3mn"),
    # empty and malformed
    ("", "5"),
    ("5", ""),
    ("\\frac{1}{", "\\frac{1}{2}"),
    ("}}}{{{\\left(\\right", "1"),
]


@pytest.mark.parametrize("pred,gold", EQUAL)
def test_equal(pred, gold):
    ok, why = verify.explain(pred, gold)
    assert ok, f"{pred!r} vs {gold!r} should be equal: {why}"


@pytest.mark.parametrize("pred,gold", NOT_EQUAL)
def test_not_equal(pred, gold):
    ok, why = verify.explain(pred, gold)
    assert not ok, f"{pred!r} vs {gold!r} should NOT be equal, but: {why}"


def test_equal_is_symmetric_on_the_rule_cases():
    """The rules do not depend on which side is the gold, except where the gold's form is the specification
    (the gold's base subscript, a multiple-choice letter gold, a percent gold, an "x =" or a clock time gold)."""
    asymmetric = {
        ("52", "52_8"),
        ("42_8", "34"),
        ("\\textbf{(C)} 12", "C"),
        ("B", "\\text{(B) } 4"),
        ("4", "\\textbf{(B) }4"),
        ("C. x = 42", "C"),
        ("D: 36", "D"),
        ("\\textbf{(D) } 6", "6"),
        ("\\pi", "3.14159265"),
        ("\\sqrt{2}", "1.4142136"),
        ("1000,99", "1000.99"),
        ("0,111", "0.111"),
        ("2,74", "2.74"),
        ("8:34 PM", "20:34"),
        ("12:15 AM", "00:15"),
        ("B", "B. 12"),
        ("12", "B) 12"),
        ("0.5", "C. $\\frac{1}{2}$"),
    }
    for pred, gold in EQUAL:
        if (pred, gold) not in asymmetric:
            assert is_equivalent(gold, pred), (gold, pred)


def test_no_global_state_is_touched_and_threads_agree():
    """verify.py keeps its own mpmath contexts (the caller's mpmath.mp precision neither matters nor changes), and
    grading from several threads at once gives the sequential verdicts."""
    import mpmath

    old = mpmath.mp.dps
    try:
        mpmath.mp.dps = 5
        assert is_equivalent("\\pi", "3.14159") is True and is_equivalent("\\pi", "3.1416") is False
        assert mpmath.mp.dps == 5
    finally:
        mpmath.mp.dps = old
    cases = EQUAL[::7] + NOT_EQUAL[::7]
    expected = [is_equivalent(p, g) for p, g in cases]
    results = [None] * 4
    threads = [
        threading.Thread(target=lambda k=k: results.__setitem__(k, [is_equivalent(p, g) for p, g in cases]))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected] * 4


def test_bad_types_never_raise():
    assert is_equivalent(None, "5") is False
    assert is_equivalent("5", None) is False
    assert grade(None, "5") is False
    assert grade("\\boxed{142}", 142.0) is True  # AMC stores answers as floats
    assert grade("\\boxed{3}", ["2", "3"]) is True
    assert grade("\\boxed{3}", []) is False
    assert grade(12345, "5") is False


# ----------------------------------------------------------------------------------------------------------------------
# Extraction


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{a} first, then \\boxed{b}", "b"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("\\fbox{7}", "7"),
        ("we get $\\boxed 5$", "5"),
        ("<answer>\\boxed{3}</answer> later text \\boxed{4}", "3"),
        ("<think>x</think>\n<answer>\n42\n</answer>", "42"),
        ("<answer>The answer is 7.</answer>", "7"),
        ("The final answer is: $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("Final Answer: 12", "12"),
        ("so 3 + 4 = 7\n**Answer:** 7", "7"),
        ("<answer>So the total is 42</answer>", "42"),
        ("Therefore, the answer is 3.5.", "3.5"),
        ("So the answer is x = -3.\nDone", "x = -3"),
        ("We get 3 apples and then 4 pears", "4"),
        ("Thus x = -3.", "-3"),
        ("a total of 1,000 apples", "1,000"),
        ("a ratio of 3/4", "3/4"),
        ("no numbers at all", None),
        ("", None),
        ("\\boxed{}", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_modes():
    text = "We find 3 apples. The answer is 5."
    assert extract_answer(text, strict=True) == "5"
    assert extract_answer(text, boxed_only=True) is None
    assert extract_answer("I count 3 apples", strict=True) is None
    assert extract_answer("I count 3 apples") == "3"
    assert extract_answer("so \\boxed{12", boxed_only=True) is None  # an unclosed last box is no answer
    assert extract_answer("so \\boxed{12", strict=True) is None
    assert extract_answer("\\boxed{1} <answer>\\boxed{2}</answer> \\boxed{3}", boxed_only=True) == "2"
    # eval's protocol: the boxed answer or nothing
    assert grade("The answer is 5", "5", boxed_only=True) is False
    assert grade("The answer is 5", "5") is True


# Full responses: (response, gold, verdict of grade()). Each rule's true case has a false twin of the same shape.
RESPONSES = [
    # several boxes joined by a connector are one unordered answer; a step of the work before the last box is not
    ("The solutions are $\\boxed{1}, \\boxed{2}$.", "1, 2", True),
    ("The solutions are $\\boxed{1}, \\boxed{3}$.", "1, 2", False),
    ("$\\boxed{1}, \\boxed{2}$", "2", False),
    ("So $x = \\boxed{-3}$ \\quad or \\quad $x = \\boxed{5}$.", "5, -3", True),
    ("So $x = \\boxed{-3}$ \\quad or \\quad $x = \\boxed{4}$.", "5, -3", False),
    ("$\\boxed{3}\\text{ and }\\boxed{7}$", "7, 3", True),
    ("$\\boxed{3}\\text{ and }\\boxed{8}$", "7, 3", False),
    ("She needs $\\boxed{12}$ papers and $\\boxed{3}$ bins.", "12, 3", True),
    ("She needs $\\boxed{12}$ papers and $\\boxed{4}$ bins.", "12, 3", False),
    ("The pairs are $\\boxed{(1,2)}$, $\\boxed{(2,1)}$.", "(2,1), (1,2)", True),
    ("The pairs are $\\boxed{(1,2)}$, $\\boxed{(2,2)}$.", "(2,1), (1,2)", False),
    ("$\\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{639}{40}}$ inches.", "\\frac{639}{40}", True),
    ("$\\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{637}{40}}$ inches.", "\\frac{639}{40}", False),
    ("A guess: \\boxed{4}. Checking again, the area is \\boxed{6}.", "6", True),
    ("A guess: \\boxed{6}. Checking again, the area is \\boxed{4}.", "6", False),
    ("First \\boxed{2} + 3 = \\boxed{5}", "5", True),
    # no box: the last math span, or a number stated after it; a span naming a variable is not the answer
    ("Testing small cases, the largest $n$ is 34.", "34", True),
    ("Testing small cases, the largest $n$ is 35.", "34", False),
    ("So $a + b = 7$, and the final value is $\\frac{7}{2}$.", "3.5", True),
    ("So $a + b = 7$, and the final value is $\\frac{7}{3}$.", "3.5", False),
    ("**Final Answer**\n$\\frac{3}{4}$", "0.75", True),
    ("**Final Answer**\n$\\frac{3}{5}$", "0.75", False),
    ("Thus the inequality holds exactly when \\(x \\geq 5\\).", "[5, \\infty)", True),
    ("Thus the inequality holds exactly when \\(x > 5\\).", "[5, \\infty)", False),
    ("Dividing by $-1$ flips it: $$-x > -1$$", "x < 1", True),
    ("Dividing by $-1$ flips it: $$-x > -1$$", "x > 1", False),
    ("Solving, $x_1 = 2$ and $x_2 = -7$.", "-7, 2", True),
    ("Solving, $x_1 = 2$ and $x_2 = 7$.", "-7, 2", False),
    ("So there are 12 ways to choose $k$.", "12", True),
    ("So the minimum is 7, achieved when $a = b$.", "7", True),  # a relation of names is no value
    ("Therefore the answer choice is $C$.", "C", True),  # only a name and no number: the name
    ("Therefore the answer choice is $C$.", "D", False),
    ("So she pays $\\$1,\\!657$ in total.", "1657", True),  # an escaped dollar inside $...$
    ("So she pays $\\$1,\\!657$ in total.", "1656", False),
    ("So the minimum is 7, achieved when $a = b$.", "8", False),
    ("So the sum is $\\frac{5}{2}$ (by step 3).", "\\frac52", True),
    ("So the sum is $\\frac{5}{2}$ (by step 3).", "3", False),
    ("We get \\[\\frac{a}{b} = \\frac{2}{5}\\]\nso the ratio is 2:5.", "2:5", True),
    ("We get \\[\\frac{a}{b} = \\frac{2}{5}\\]\nso the ratio is 2:5.", "5", False),
    ("The probability is $\\frac{5}{12}$, approximately 0.4167.", "\\frac{5}{12}", True),
    ("The probability is $\\frac{1}{6}$, or about $16.7\\%$.", "\\frac{1}{6}", True),
    ("The probability is $\\frac{1}{7}$, or about $16.7\\%$.", "\\frac{1}{6}", False),
    ("We find $f(3) = 2$, not $4$.", "2", True),
    ("We find $f(3) = 2$, not $4$.", "4", False),
    ("The probability is $\\frac{5}{13}$, approximately 0.3846.", "\\frac{5}{12}", False),
    ("Multiplying gives 5! = 120. I hope it is correct.", "120", True),
    ("So $f(-2) + f(0) = \\frac{-8}{-4} + 1 = 2 + 1 = 3$.", "3", True),  # a computation ends in its result
    ("So $f(-2) + f(0) = \\frac{-8}{-4} + 1 = 2 + 1 = 4$.", "4", False),  # ... when its last two sides agree
    ("\\begin{align*}\na &= 2 + 3 \\\\\n&= 5.\n\\end{align*}", "5", True),  # an aligned display's last row
    ("\\begin{align*}\na &= 2 + 3 \\\\\n&= 5.\n\\end{align*}", "3", False),
    ("Since $x$ cannot be $0$, $x = 5$.", "5", True),
    ("Multiplying gives 5! = 120. I hope it is correct.", "24", False),
    ("The correct option is (A).", "A", True),
    ("The answer is $3$ and $4$.", "4, 3", True),  # formulas joined after the phrase
    ("The answer is $3$ and $4$.", "4", False),
    ("The answer is $3$. Then $4$ is the next term.", "3", True),
    ("The correct option is (A).", "B", False),
    # a denied value is no answer
    ("The answer is not $7$; recomputing gives $8$.", "8", True),
    ("The answer is not $7$.", "7", False),
    ("The total is not 42.", "42", False),
    ("So the sum isn't $42$.", "42", False),
    ("Since it isn't 42, we try 43: $43$ works.", "43", True),
    # text after a chat-template marker is not this response
    ("So the answer is 42.<|im_start|>user\nWhat is 7 times 3?<|im_end|>\n<|im_start|>assistant\n21", "42", True),
    ("So the answer is 41.<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n42", "42", False),
    ("The sum is $\\boxed{9}$.<|im_end|><|im_start|>user\nWrong, it is \\boxed{8}", "9", True),
    ("So $n = 12$.<｜end▁of▁sentence｜>Then n = 13", "12", True),
    ("So $n = 12$.\n\nHuman: and 13?", "13", False),
    ("The sum is $\\boxed{9}$.<|im_end|><|im_start|>user\nWrong, it is \\boxed{8}", "8", False),
    # a response cut off inside its box, or right before its answer, has no answer (the number before is not it)
    ("We get $x = 3$. Thus the answer is $\\boxed{3", "3", False),
    ("We get $x = 3$. Thus the answer is $\\boxed{3}$", "3", True),
    ("So the count is \\boxed{25\\}", "25", True),  # a mistyped \\} closed it: not cut off
    ("<think>2 + 2 is 4, so the answer should be", "4", False),
    ("<think>2 + 2 is 4, so the answer should be 4", "4", True),
    ("The sum is $3 + 4 =", "7", False),
    ("The sum is $3 + 4 = 7$", "7", True),
    # GSM8K's closing "#### 18" line is the answer; a "#### Step 1" heading is not
    ("She sells 9 eggs for 9 * $2 = $18.\n#### 18", "18", True),
    ("She sells 9 eggs for 9 * $2 = $18.\n#### 18", "9", False),
    ("#### Step 1\nWe get 5 apples, so $x=5$.", "5", True),
    ("#### 1\nWe get 5 apples, so $x=5$.", "1", False),
    # PRM800K's "# Answer" heading with the bare answer below it; a sentence below it is left to the closing value
    ("So we have $x = 5$.\n\n# Answer\n\n6", "6", True),
    ("So we have $x = 5$.\n\n# Answer\n\n6", "5", False),
    ("# Answer\n\n(2, 3)", "(2,3)", True),
    ("# Answer\n\n(2, 3)", "(3,2)", False),
    ("### Final Answer\n\nThe number of ways is $12$.", "12", True),
    # "impossible for ... to be" denies; a response ending on "by" / "and" was cut off
    ("Therefore, it is impossible for $n$ to be $3$.", "3", False),
    ("Therefore, it is possible for $n$ to be $3$.", "3", True),
    ("So $3 \\times 7 = 21$, and then multiply by", "21", False),
    ("So $3 \\times 7 = 21$, and then multiply by 2 to get $42$.", "42", True),
    # yes/no answers in words
    ("So no such integer exists. The answer is no.", "No", True),
    ("So no such integer exists. The answer is no.", "Yes", False),
    # a predicted time of day against a bare gold clock reading
    ("The train leaves at $\\boxed{3:45 \\text{ PM}}$.", "3:45", True),
    ("The train leaves at $\\boxed{3:54 \\text{ PM}}$.", "3:45", False),
    ("She wakes at $\\boxed{\\text{9:30 a.m.}}$.", "9:30\\text{ a.m.}", True),
    ("She wakes at $\\boxed{\\text{9:30 p.m.}}$.", "9:30\\text{ a.m.}", False),
    # the answer phrase in Chinese and in French
    ("因此，答案是 12。我们用了 3 步。", "12", True),
    ("因此，答案是 12。我们用了 3 步。", "3", False),
    ("La réponse finale est 12. Nous avons utilisé 3 étapes.", "12", True),
    ("La réponse finale est 12. Nous avons utilisé 3 étapes.", "3", False),
    # the phrase's answer ends where a clause begins; a list goes on
    ("The answer is 42, but let me double check: 6 * 7 = 42.", "42", True),
    ("The answer is 42, but let me double check: 6 * 7 = 42.", "7", False),
    ("The answer is 4, 2.", "4, 2", True),
    ("The answer is 4, 2.", "4", False),
    # a mixed number after the phrase
    ("So the answer is 4 4/9.", "\\frac{40}{9}", True),
    ("So the answer is 4 4/9.", "\\frac{4}{9}", False),
]


@pytest.mark.parametrize("response,gold,verdict", RESPONSES)
def test_grade_full_responses(response, gold, verdict):
    assert grade(response, gold) is verdict, (extract_answer(response), gold)


def test_one_box_extracts_as_before_and_boxed_only_keeps_the_last_box():
    """The new paths only add answers where there were none or several: one box gives its content, and the papers'
    protocol (boxed_only) still takes the last box alone."""
    assert extract_answer("We get $x = \\boxed{3}$, so $y = 4$.") == "3"
    assert extract_answer("$\\boxed{1}, \\boxed{2}$") == "1, 2"
    assert extract_answer("$\\boxed{1}, \\boxed{2}$", boxed_only=True) == "2"
    assert extract_answer("so $x = 3$", strict=True) is None
    assert grade("$\\boxed{1}, \\boxed{2}$", "1, 2", boxed_only=True) is False


def test_extract_huge_response_is_linear():
    """A 200k-character response with many boxes and numbers extracts the last box (no quadratic regex)."""
    text = ("\\boxed{1} 23 " * 20000) + "\\boxed{\\frac{22}{7}}"
    assert extract_answer(text) == "\\frac{22}{7}"
    assert grade(text, "22/7") is True
    for unboxed in (
        "\\( $ " * 40000 + "so $\\frac{22}{7}$",
        "$x$ 23 " * 30000 + "so it is $\\frac{22}{7}$.",
        "\\boxed{7}, " * 20000 + "\\boxed{\\frac{22}{7}}",  # boxes joined only within the response's tail
    ):
        start = time.perf_counter()
        assert extract_answer(unboxed).endswith("\\frac{22}{7}")
        assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert is_equivalent("1 + " + "\\pm 1 + " * 40 + "1", "1") is False  # 2^40 sign choices are never built
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Data-wide checks (../shared/data)


def _all_gold_answers() -> list[str]:
    answers = []
    for path in sorted(shared_path("data").glob("*/*.jsonl")):
        for line in path.open():
            row = json.loads(line)
            answers.extend(a for a in (row.get("answers") or [row["answer"]]) if a.strip())
    return answers


def test_every_gold_answer_grades_correct_against_itself_boxed():
    """~10,000 gold answers (train + 5 eval sets, every entry of `answers`), graded across 2 worker processes."""
    answers = _all_gold_answers()
    assert len(answers) > 10000
    verdicts = grade_batch([f"Thus $\\boxed{{{a}}}$." for a in answers], answers, boxed_only=True, workers=2)
    failed = [a for a, ok in zip(answers, verdicts) if not ok]
    assert not failed, f"{len(failed)} gold answers not equal to themselves: {failed[:10]}"


def test_every_gold_answer_is_understood():
    """Every gold answer parses, or is a word / multiple-choice answer: none falls back to string comparison only."""
    not_parsed = []
    for a in _all_gold_answers():
        norm, _, tree, err = verify._prepare(a)
        if tree is None and verify._mc_letters(norm, False) is None and not verify._has_words(norm):
            not_parsed.append((a, err))
    assert not not_parsed, not_parsed[:10]


def _math500() -> list[dict]:
    return [json.loads(line) for line in shared_path("data", "eval", "math500.jsonl").open()]


def test_math500_solutions_grade_correct():
    rows = _math500()
    wrong = [r["id"] for r in rows if not grade(r["solution"], r["answer"], boxed_only=True)]
    assert len(rows) == 500 and not wrong, wrong


def test_math500_solutions_extract_as_the_boxed_protocol_does():
    """The new extraction paths only act on several boxes or none: every MATH500 solution with one box gives the
    training reward the same answer as the papers' boxed protocol, and those with several join only adjacent ones."""
    rows = _math500()
    one = [r for r in rows if r["solution"].count("\\boxed") == 1]
    assert len(one) > 450
    assert [extract_answer(r["solution"]) for r in one] == [extract_answer(r["solution"], boxed_only=True) for r in one]
    several = [r for r in rows if r["solution"].count("\\boxed") > 1]
    assert all(grade(r["solution"], r["answer"]) for r in several)


def _unboxed(solution: str) -> str:
    """The solution with every \\boxed{X} replaced by X: a response that states its answer without a box."""
    out, i = [], 0
    while (k := solution.find("\\boxed", i)) >= 0:
        group = verify._braced(solution, k + len("\\boxed"))
        if group is None:
            break
        out += [solution[i:k], group[0]]
        i = group[1]
    return "".join(out) + solution[i:]


def test_math500_solutions_without_their_boxes():
    """The closing-value rules on 500 real solutions with the box taken out: most still grade correct (the answer is
    the last math span, a computation's result, an aligned display's last row), and none against a shuffled answer."""
    rows = _math500()
    perm = list(range(500))
    random.Random(0).shuffle(perm)
    responses = [_unboxed(r["solution"]) for r in rows]
    assert not any("\\boxed" in t for t in responses)
    correct = sum(grade(t, r["answer"]) for t, r in zip(responses, rows))
    false_pos = [
        (r["answer"], rows[j]["answer"])
        for t, r, j in zip(responses, rows, perm)
        if r["answer"].strip() != rows[j]["answer"].strip() and grade(t, rows[j]["answer"])
    ]
    assert correct >= 400, correct  # 414 when written; 291 before these rules
    assert not false_pos, false_pos


def test_math500_solutions_against_shuffled_answers_grade_wrong():
    """A derangement of the answers: only pairs whose two gold answers are the same string may grade correct."""
    rows = _math500()
    perm = list(range(500))
    random.Random(0).shuffle(perm)
    perm = [j if j != i else (i + 1) % 500 for i, j in enumerate(perm)]
    false_pos, genuine = [], 0
    for r, j in zip(rows, perm):
        same = r["answer"].strip() == rows[j]["answer"].strip()
        genuine += same
        if grade(r["solution"], rows[j]["answer"]) and not same:
            false_pos.append((r["answer"], rows[j]["answer"]))
    assert not false_pos, false_pos
    assert genuine == 8  # e.g. two problems whose answer is 3


_REL_TEXT = {"=": "=", "<": "<", "<=": "\\le", "!=": "\\ne", "in": "\\in", ">": ">", ">=": "\\ge", "~": "\\approx"}


def _render(t: tuple) -> str:
    """Another notation for a parsed answer: plain text with explicit operators and brackets ("\\frac{7}{2}" ->
    "(7)/(2)", "2\\sqrt{3}" -> "(2)*(sqrt(3))"), so re-parsing it must give an equal answer (a parser round trip)."""
    k, r = t[0], _render
    if k == "num":
        return f"({t[1].numerator}/{t[1].denominator})" if t[1].denominator != 1 else str(t[1].numerator)
    if k == "sym":
        name, _, sub = t[1].partition("_")
        if not (len(name) == 1 or name[1:].isalpha() and name[0] == "\\"):
            raise ValueError(f"symbol {t[1]}")
        return f"{name}_{{{sub}}}" if sub else name + " "
    if k == "const":
        return {"pi": "\\pi ", "e": "e", "i": "i", "inf": "\\infty "}[t[1]]
    if k == "neg":
        return f"-({r(t[1])})"
    if k == "add":
        return "".join((" \\pm " if c[0] == "pm" else " + ") + f"({r(c[1] if c[0] == 'pm' else c)})" for c in t[1])
    if k == "mul":
        return "*".join(f"({r(c)})" for c in t[1])
    if k == "frac":
        return f"({r(t[1])})/({r(t[2])})"
    if k == "pow":
        return f"({r(t[1])})^({r(t[2])})"
    if k == "root":
        return f"sqrt({r(t[1])})" if t[2] == ("num", 2, False) else f"({r(t[1])})^(1/({r(t[2])}))"
    if k == "fn" and t[1] not in ("max", "min", "gcd", "lcm", "det"):
        return f"\\{t[1]}({r(t[2])})"
    if k == "log":
        return f"\\ln({r(t[1])})" if t[2] is None else f"(\\ln({r(t[1])}))/(\\ln({r(t[2])}))"
    if k in ("floor", "ceil"):
        return f"\\l{k}({r(t[1])})\\r{k}"
    if k == "fact":
        return f"({r(t[1])})!"
    if k == "binom":
        return f"\\binom{{{r(t[1])}}}{{{r(t[2])}}}"
    if k == "list":
        return ", ".join(r(c) for c in t[1])
    if k == "set":
        return "\\{" + ", ".join(r(c) for c in t[1]) + "\\}"
    if k == "seq":
        return t[1][0] + ", ".join(r(c) for c in t[2]) + t[1][1]
    if k == "union":
        return " \\cup ".join(r(c) for c in t[1])
    if k == "matrix":
        return "\\begin{bmatrix}" + " \\\\ ".join(" & ".join(r(c) for c in row) for row in t[1]) + "\\end{bmatrix}"
    if k == "rel":
        out = r(t[2][0])
        for op, e in zip(t[1], t[2][1:]):
            out += f" {_REL_TEXT[op]} {r(e)}"
        return out
    if k == "ratio":
        return f"{r(t[1][0])} : {r(t[1][1])}"
    raise ValueError(k)


def test_gold_answers_survive_a_round_trip_through_another_notation():
    """Every parsed gold answer of the data, re-written in plain text with explicit operators, is still equal to
    itself: the parser, the evaluator and the structural rules agree across notations on real answer styles."""
    seen, missed, checked = set(), [], 0
    for a in _all_gold_answers():
        norm, _, tree, _ = verify._prepare(a)
        if tree is None or norm in seen or verify._has_words(norm):
            continue
        seen.add(norm)
        try:
            text = _render(tree)
        except ValueError:
            continue
        checked += 1
        ok, why = verify.explain(text, a)
        if not ok:
            missed.append((text, a, why))
    assert checked > 3000
    assert not missed, missed[:10]


def _bump(t, delta: Fraction, done: list):
    """The tree with its first number literal changed by delta (a surely different answer, in the same style)."""
    if not isinstance(t, tuple) or not t:
        return t
    if not isinstance(t[0], str):
        return tuple(_bump(f, delta, done) for f in t)
    if t[0] == "num" and not done:
        done.append(True)
        return ("num", t[1] + delta, t[2])
    return (t[0],) + tuple(_bump(f, delta, done) if isinstance(f, tuple) else f for f in t[1:])


def test_gold_answers_with_a_changed_number_grade_wrong():
    """Every parsed gold answer with its first number changed by 1 or by 1/7, in another notation, is graded wrong:
    ~7,500 near misses in the data's own answer styles (numbers, tuples, intervals, equations, expressions)."""
    seen, wrong, checked = set(), [], 0
    for a in _all_gold_answers():
        norm, _, tree, _ = verify._prepare(a)
        if tree is None or norm in seen or verify._has_words(norm):
            continue
        seen.add(norm)
        for delta in (Fraction(1), Fraction(1, 7)):
            done = []
            other = _bump(tree, delta, done)
            try:
                text = _render(other)
            except ValueError:
                continue
            if done:
                checked += 1
                ok, why = verify.explain(text, a)
                if ok:
                    wrong.append((text, a, why))
    assert checked > 5000
    assert not wrong, wrong[:10]


# ----------------------------------------------------------------------------------------------------------------------
# Time limit and pathological input

PATHOLOGICAL = [
    ("10^{10^{10}}", "10^{10^{10}}+1"),
    ("2^{2^{2^{100}}}", "2^{2^{2^{100}}}-1"),
    ("(10^{6})!", "5"),
    ("e^{10^{10}}", "e^{10^{10}}+1"),
    ("\\lfloor 10^{1000} \\pi \\rfloor", "1"),
    ("\\binom{10^{9}}{5 \\cdot 10^8}", "1"),
    ("(10^{1000})^{10^{4}}", "1"),
    ("x^{10^{100}}", "x^{10^{100}}+1"),
    ("9" * 4000 + "^" + "9" * 4000, "1"),
    ("1" * 100_000, "1" * 99_999 + "2"),
    ("+".join(["x"] * 50_000), "2"),
    ("{" * 10_000 + "1" + "}" * 10_000, "1"),
    ("(" * 10_000 + "1" + ")" * 10_000, "1"),
    ("\\sqrt{" * 500 + "2" + "}" * 500, "2"),
    ("\\frac{1}{", "\\frac{1}{2}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 \\end{pmatrix}", "1"),
    ("\\left(\\right.\\right)", "1"),
    ("\\\\\\\\\\\\", "\\\\"),
    ("1 + " + "\\pm 1 + " * 40 + "1", "1"),  # 2^40 sign choices: expanded only up to 8 values
    ("%$#@!^_&", "1"),
]


@pytest.mark.parametrize("pred,gold", PATHOLOGICAL)
def test_pathological_input_returns_false(pred, gold):
    assert is_equivalent(pred, gold) is False
    assert grade("\\boxed{" + pred + "}", gold) is False


def test_time_limit_interrupts_python_code_main_thread_and_other_threads():
    """The limit stops pure-Python work (a stand-in for a slow sympy call) in the main thread (SIGALRM) and in any
    other thread (injected exception), returns the default, and leaves no timer behind."""

    def spin():
        while True:
            pass

    assert verify._limited(spin, (), 0.2, "timed out") == "timed out"
    assert verify._limited(lambda: 7, (), 0.2, None) == 7
    out = []
    worker = threading.Thread(target=lambda: out.append(verify._limited(spin, (), 0.2, "timed out")))
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and out == ["timed out"]
    time.sleep(0.3)  # a stray alarm or injected exception would fire here and fail the test
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_restores_callers_alarm_handler():
    import signal

    fired = []

    def handler(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        assert is_equivalent("\\frac12", "0.5") is True
        assert signal.getsignal(signal.SIGALRM) is handler
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        time.sleep(0.2)
        assert fired == [signal.SIGALRM]
    finally:
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mathrl.verify", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_prints_verdict_and_reason():
    out = _cli("\\frac{1}{2}", "0.5")
    assert out.returncode == 0 and out.stdout.startswith("True") and "1/2" in out.stdout
    out = _cli("(1,2)", "(2,1)")
    assert out.returncode == 1 and out.stdout.startswith("False") and "tuple" in out.stdout
    out = _cli("--response", "so the answer is $\\boxed{x=5}$.", "5")
    assert out.returncode == 0 and "extracted: 'x=5'" in out.stdout
    out = _cli("--response", "--boxed-only", "the answer is 5", "5")
    assert out.returncode == 1 and "no answer" in out.stdout
    out = _cli("--response", "so $\\boxed{1}$, $\\boxed{2}$", "2, 1")  # the extraction rule is named too
    assert out.returncode == 0 and "extracted: '1, 2'  (boxes joined)" in out.stdout
    out = _cli("--response", "Hence $x \\geq 5$.", "[5, \\infty)")
    assert out.returncode == 0 and "(last math span)" in out.stdout and "union of intervals" in out.stdout
    out = _cli("|AB| = 2", "2")
    assert out.returncode == 0 and "labelled" in out.stdout
