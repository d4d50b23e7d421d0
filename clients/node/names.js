'use strict';
// Python's difflib.get_close_matches, for the "did you mean" of a mistyped choice: the Python CLI
// (tessera.command_parser) suggests with it, and both CLIs are to suggest the same word.

// The code points of `text`, as Python iterates a str (an astral character is one, not two).
const codePoints = (text) => Array.from(text);

// difflib.SequenceMatcher(None, a, b): the characters of `a` and `b` that match, counted as
// get_matching_blocks finds them (the longest match first, then each side of it).
function matchedCount(a, b) {
  const b2j = new Map();
  b.forEach((char, j) => b2j.set(char, [...(b2j.get(char) || []), j]));
  // difflib's autojunk: in a b of 200 or more, a character in over 1% of it is no anchor.
  if (b.length >= 200) {
    const most = Math.floor(b.length / 100) + 1;
    for (const [char, indices] of b2j) if (indices.length > most) b2j.delete(char);
  }
  const longest = (alo, ahi, blo, bhi) => {
    let [besti, bestj, bestsize] = [alo, blo, 0];
    let j2len = new Map();
    for (let i = alo; i < ahi; i += 1) {
      const next = new Map();
      for (const j of b2j.get(a[i]) || []) {
        if (j < blo) continue;
        if (j >= bhi) break;
        const k = (j2len.get(j - 1) || 0) + 1;
        next.set(j, k);
        if (k > bestsize) [besti, bestj, bestsize] = [i - k + 1, j - k + 1, k];
      }
      j2len = next;
    }
    // Extended over what autojunk left out of b2j, as difflib does (it has no junk of its own).
    while (besti > alo && bestj > blo && a[besti - 1] === b[bestj - 1]) {
      [besti, bestj, bestsize] = [besti - 1, bestj - 1, bestsize + 1];
    }
    while (besti + bestsize < ahi && bestj + bestsize < bhi && a[besti + bestsize] === b[bestj + bestsize]) {
      bestsize += 1;
    }
    return [besti, bestj, bestsize];
  };
  let matched = 0;
  const queue = [[0, a.length, 0, b.length]];
  while (queue.length) {
    const [alo, ahi, blo, bhi] = queue.pop();
    const [i, j, k] = longest(alo, ahi, blo, bhi);
    if (!k) continue;
    matched += k;
    if (alo < i && blo < j) queue.push([alo, i, blo, j]);
    if (i + k < ahi && j + k < bhi) queue.push([i + k, ahi, j + k, bhi]);
  }
  return matched;
}

// 2 * matches / total length, as SequenceMatcher.ratio(); 1 for two empty strings.
const ratio = (matches, total) => (total ? (2 * matches) / total : 1);

// The characters `a` and `b` have in common, in any order (SequenceMatcher.quick_ratio's count).
function commonCount(a, b) {
  const left = new Map();
  for (const char of b) left.set(char, (left.get(char) || 0) + 1);
  let common = 0;
  for (const char of a) {
    if (left.get(char) > 0) {
      left.set(char, left.get(char) - 1);
      common += 1;
    }
  }
  return common;
}

// difflib.get_close_matches(word, possibilities, n, cutoff): the best `n` of `possibilities`
// scoring at least `cutoff`, best first (a tie: the greater string first, as heapq.nlargest).
function closeMatches(word, possibilities, n = 3, cutoff = 0.6) {
  const b = codePoints(word);
  const scored = [];
  for (const possibility of possibilities) {
    const a = codePoints(possibility);
    const total = a.length + b.length;
    if (ratio(Math.min(a.length, b.length), total) < cutoff) continue;
    if (ratio(commonCount(a, b), total) < cutoff) continue;
    const score = ratio(matchedCount(a, b), total);
    if (score >= cutoff) scored.push([score, possibility]);
  }
  scored.sort(([s1, x1], [s2, x2]) => s2 - s1 || (x1 < x2 ? 1 : x1 > x2 ? -1 : 0));
  return scored.slice(0, n).map(([, possibility]) => possibility);
}

// "; did you mean 'running'?" for the one of `choices` `value` was likely meant as, else "": the
// Python CLI's rule (difflib's nearest, cutoff 0.6) and words.
function didYouMean(value, choices) {
  const [meant] = closeMatches(value, choices, 1);
  return meant === undefined ? '' : `; did you mean '${meant}'?`;
}

module.exports = { closeMatches, didYouMean };
