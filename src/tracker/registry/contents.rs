//! The contents announced under one file name, and the swarm of each.
//!
//! A name nearly always carries one content; owners disagree only while a file changes, or
//! when a stranger announces a different file under a popular name. The one content is
//! kept inline in the table's entry for the name, so a look-up goes from the name to the
//! owners without a second table's control bytes and buckets, each a cache miss in a large
//! table. A name with several contents keeps them in a map: an announce, or a look-up
//! pinned to its content (every running download's), finds its swarm in one probe however
//! many contents strangers have put under the name.

use super::HashMap;
use super::swarm::Swarm;
use crate::messages::ContentId;

/// The contents under one name, each with its swarm. Never without a content: the table
/// enters a name with its first one, and drops the name when its last swarm empties.
#[derive(Debug)]
pub(super) enum Contents {
    /// One, as nearly always.
    One(ContentId, Swarm),
    /// Two or more (one or none only briefly, until [`settle`](Self::settle)).
    Many(HashMap<ContentId, Swarm>),
}

impl Contents {
    /// How many contents there are.
    pub fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(map) => map.len(),
        }
    }

    /// Whether no content has an owner left: the name can go.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::One(_, swarm) => swarm.is_empty(),
            // The table drops an emptied content from a map at once.
            Self::Many(map) => map.is_empty(),
        }
    }

    /// The swarm of `content`, if announced.
    pub fn get(&self, content: &ContentId) -> Option<&Swarm> {
        match self {
            Self::One(c, swarm) => (c == content).then_some(swarm),
            Self::Many(map) => map.get(content),
        }
    }

    /// The swarm of `content`, if announced, to change.
    pub fn get_mut(&mut self, content: &ContentId) -> Option<&mut Swarm> {
        match self {
            Self::One(c, swarm) => (c == content).then_some(swarm),
            Self::Many(map) => map.get_mut(content),
        }
    }

    /// The swarm of `content`, made by `new` if the content is new under this name.
    pub fn get_or_insert_with(
        &mut self,
        content: ContentId,
        new: impl FnOnce() -> Swarm,
    ) -> &mut Swarm {
        if let Self::One(c, _) = self
            && *c != content
        {
            // A second content: both go to a map.
            let placeholder = Self::Many(HashMap::default());
            if let Self::One(c, swarm) = std::mem::replace(self, placeholder)
                && let Self::Many(map) = self
            {
                map.insert(c, swarm);
            }
        }
        match self {
            Self::One(_, swarm) => swarm,
            Self::Many(map) => map.entry(content).or_insert_with(new),
        }
    }

    /// Every content with its swarm, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&ContentId, &Swarm)> {
        let (one, many) = match self {
            Self::One(c, swarm) => (Some((c, swarm)), None),
            Self::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Every content with its swarm, to change, in no order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ContentId, &mut Swarm)> {
        let (one, many) = match self {
            Self::One(c, swarm) => (Some((&*c, swarm)), None),
            Self::Many(map) => (None, Some(map.iter_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Drops `content` if its swarm has no owner left.
    pub fn drop_if_empty(&mut self, content: &ContentId) {
        if let Self::Many(map) = self
            && map.get(content).is_some_and(Swarm::is_empty)
        {
            map.remove(content);
            self.settle();
        }
    }

    /// Drops every content whose swarm has no owner left.
    pub fn drop_empty(&mut self) {
        if let Self::Many(map) = self {
            map.retain(|_, swarm| !swarm.is_empty());
            self.settle();
        }
    }

    /// Puts a map left with one content back inline. (One left with none stays a map:
    /// the table drops the name.)
    fn settle(&mut self) {
        let last = match self {
            Self::Many(map) if map.len() == 1 => map.drain().next(),
            _ => None,
        };
        if let Some((c, swarm)) = last {
            *self = Self::One(c, swarm);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::tracker::registry::nodes::NodeId;
    use crate::tracker::registry::swarm::Owner;

    fn content(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    fn owned(size: u64, node: u32) -> Swarm {
        let now = Instant::now();
        let mut swarm = Swarm::new(size, now);
        swarm.insert(Owner {
            node: NodeId::from_index(node),
            pieces: 1,
            complete: true,
            v6: false,
            last_seen: now,
        });
        swarm
    }

    fn sizes(contents: &Contents) -> Vec<(u8, u64)> {
        let mut v: Vec<_> = contents.iter().map(|(c, s)| (c.0[0], s.size)).collect();
        v.sort_unstable();
        v
    }

    /// One content stays inline; a second moves both to a map; emptying all but one
    /// swarm brings the survivor back inline, and emptying it leaves the name empty.
    /// Every step finds each content's own swarm.
    #[test]
    fn a_second_content_moves_to_a_map_and_the_last_one_back_inline() {
        let mut contents = Contents::One(content(1), owned(10, 1));
        assert!(!contents.is_empty());
        // Asked again, the same swarm, not a new one.
        assert_eq!(
            contents
                .get_or_insert_with(content(1), || owned(99, 9))
                .size,
            10
        );
        assert!(matches!(contents, Contents::One(..)));
        contents.get_or_insert_with(content(2), || owned(20, 2));
        contents.get_or_insert_with(content(3), || owned(30, 3));
        assert!(matches!(contents, Contents::Many(..)));
        assert_eq!(contents.len(), 3);
        assert_eq!(sizes(&contents), [(1, 10), (2, 20), (3, 30)]);
        assert_eq!(contents.get(&content(2)).map(|s| s.size), Some(20));
        assert_eq!(contents.get_mut(&content(2)).map(|s| s.size), Some(20));
        assert!(contents.get_mut(&content(4)).is_none());

        // One emptied and dropped by name, one by the sweep.
        let empty = |contents: &mut Contents, c: u8| {
            if let Some(swarm) = contents.get_mut(&content(c)) {
                swarm.remove(NodeId::from_index(u32::from(c)));
            }
        };
        empty(&mut contents, 1);
        contents.drop_if_empty(&content(2));
        assert_eq!(contents.len(), 3, "a content with owners stays");
        contents.drop_if_empty(&content(1));
        assert_eq!(sizes(&contents), [(2, 20), (3, 30)]);
        empty(&mut contents, 3);
        contents.drop_empty();
        assert!(matches!(contents, Contents::One(..)), "{contents:?}");
        assert_eq!(sizes(&contents), [(2, 20)]);
        assert!(contents.get_mut(&content(3)).is_none());

        for (_, swarm) in contents.iter_mut() {
            swarm.remove(NodeId::from_index(2));
        }
        assert!(contents.is_empty());
    }
}
