//! One page of ListObjects / ListObjectsV2, as a pure fold over the keys
//! of a bucket in key order (the log's key index gives them).
//!
//! Keys here are the client's (the bucket's prefix removed). With a
//! delimiter, keys whose remainder after `prefix` holds it are rolled up
//! into one common prefix (up to and including the delimiter), counted
//! once against `max_keys`. A page ends once it holds `max_keys` entries
//! and one more exists: it is truncated, and its last entry (key or common
//! prefix) is where the next page starts (exclusive). Starting after a
//! common prefix skips every key under it.

/// What the page does with the next key offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Taken (as an object or into a common prefix), or skipped as before
    /// the start: offer the next one.
    Next,
    /// The key rolled up into this common prefix (now on the page, or the
    /// start): every key under it is too, so the next one worth offering
    /// is past the prefix.
    SkipPast(String),
    /// The page is full and more exist: stop; it is truncated.
    Full,
}

/// A page being filled.
#[derive(Debug)]
pub struct Page<T> {
    prefix: String,
    delimiter: Option<String>,
    max_keys: usize,
    /// The exclusive start: a key or a common prefix.
    after: String,
    /// Objects, with what the caller attached.
    pub objects: Vec<(String, T)>,
    /// Common prefixes.
    pub prefixes: Vec<String>,
    /// Set once a key beyond a full page was seen.
    pub truncated: bool,
}

impl<T> Page<T> {
    /// A page of keys starting with `prefix` after `after` ("" for none).
    pub fn new(prefix: &str, delimiter: Option<&str>, max_keys: usize, after: &str) -> Page<T> {
        Page {
            prefix: prefix.to_string(),
            delimiter: delimiter.filter(|d| !d.is_empty()).map(str::to_string),
            max_keys,
            after: after.to_string(),
            objects: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
        }
    }

    fn len(&self) -> usize {
        self.objects.len() + self.prefixes.len()
    }

    /// The common prefix `key` rolls up into, if any.
    fn rollup(&self, key: &str) -> Option<String> {
        let d = self.delimiter.as_deref()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        rest.find(d)
            .map(|at| format!("{}{}", self.prefix, &rest[..at + d.len()]))
    }

    /// Offers the next key (in key order).
    pub fn offer(&mut self, key: &str, item: T) -> Offer {
        if !key.starts_with(self.prefix.as_str()) {
            return Offer::Next;
        }
        let cp = self.rollup(key);
        if !self.after.is_empty() {
            if key <= self.after.as_str() {
                return Offer::Next;
            }
            if let Some(cp) = &cp
                && *cp == self.after
            {
                return Offer::SkipPast(cp.clone());
            }
        }
        if let Some(cp) = cp {
            if self.prefixes.last() == Some(&cp) {
                return Offer::SkipPast(cp);
            }
            if self.len() >= self.max_keys {
                self.truncated = true;
                return Offer::Full;
            }
            self.prefixes.push(cp.clone());
            return Offer::SkipPast(cp);
        }
        if self.len() >= self.max_keys {
            self.truncated = true;
            return Offer::Full;
        }
        self.objects.push((key.to_string(), item));
        Offer::Next
    }

    /// Where the next page starts, when this one is truncated: its last
    /// entry in key order.
    pub fn next_after(&self) -> Option<String> {
        if !self.truncated {
            return None;
        }
        let o = self.objects.last().map(|(k, _)| k.as_str());
        let p = self.prefixes.last().map(String::as_str);
        o.into_iter().chain(p).max().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists `keys` (sorted) page by page like a client following tokens.
    fn pages(
        keys: &[&str],
        prefix: &str,
        d: Option<&str>,
        max: usize,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let mut p: Page<()> = Page::new(prefix, d, max, &after);
            for k in keys {
                if p.offer(k, ()) == Offer::Full {
                    break;
                }
            }
            out.push((
                p.objects.iter().map(|(k, _)| k.clone()).collect(),
                p.prefixes.clone(),
            ));
            match p.next_after() {
                Some(a) => after = a,
                None => return out,
            }
            assert!(out.len() < 100, "no progress");
        }
    }

    #[test]
    fn pages_cover_every_key_once_in_order() {
        let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = pages(&refs, "", None, 7);
        assert_eq!(got.len(), 4);
        let flat: Vec<String> = got.into_iter().flat_map(|(o, _)| o).collect();
        assert_eq!(flat, keys);
    }

    #[test]
    fn a_delimiter_rolls_keys_up_once_even_across_pages() {
        let keys = ["a", "b/1", "b/2", "b/3", "c", "d/x/1", "d/y", "e"];
        let got = pages(&keys, "", Some("/"), 2);
        assert_eq!(
            got,
            vec![
                (vec!["a".into()], vec!["b/".into()]),
                (vec!["c".into()], vec!["d/".into()]),
                (vec!["e".into()], vec![]),
            ]
        );
        // Under a prefix, one level down.
        let got = pages(&keys, "d/", Some("/"), 10);
        assert_eq!(got, vec![(vec!["d/y".into()], vec!["d/x/".into()])]);
    }

    #[test]
    fn skip_past_names_the_prefix_so_a_driver_can_jump_over_it() {
        let mut p: Page<()> = Page::new("", Some("/"), 10, "");
        assert_eq!(p.offer("a/1", ()), Offer::SkipPast("a/".into()));
        assert_eq!(p.offer("a/2", ()), Offer::SkipPast("a/".into()));
        assert_eq!(p.offer("b", ()), Offer::Next);
        // Starting after a prefix skips what is under it.
        let mut p: Page<()> = Page::new("", Some("/"), 10, "a/");
        assert_eq!(p.offer("a/9", ()), Offer::SkipPast("a/".into()));
        assert!(p.prefixes.is_empty());
    }

    #[test]
    fn start_after_and_an_exact_page() {
        let keys = ["a", "b", "c", "d"];
        let mut p: Page<()> = Page::new("", None, 2, "b");
        for k in keys {
            if p.offer(k, ()) == Offer::Full {
                break;
            }
        }
        assert_eq!(p.objects.len(), 2);
        assert!(!p.truncated, "nothing after d: not truncated");
        assert_eq!(p.next_after(), None);
        let mut p: Page<()> = Page::new("", None, 0, "");
        assert_eq!(p.offer("a", ()), Offer::Full);
    }
}
