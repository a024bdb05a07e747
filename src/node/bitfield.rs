//! Which pieces of a file a node holds, as sent on the wire (`Bitfield`, resume records).

/// Which pieces of a file a node holds: one bit per piece, most significant bit first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitfield {
    bits: Vec<u8>,
    len: u32,
}

impl Bitfield {
    /// Returns a bitfield of `len` pieces, none held.
    pub fn empty(len: u32) -> Self {
        Self {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
        }
    }

    /// Returns a bitfield of `len` pieces, all held.
    pub fn full(len: u32) -> Self {
        let mut b = Self::empty(len);
        (0..len).for_each(|i| b.set(i));
        b
    }

    /// Reads a peer's bitfield, or `None` if it has the wrong length or spare bits set.
    pub fn from_bytes(bits: Vec<u8>, len: u32) -> Option<Self> {
        let b = Self { bits, len };
        let spare_clear = (len..b.bits.len() as u32 * 8).all(|i| !b.get_raw(i));
        (b.bits.len() == len.div_ceil(8) as usize && spare_clear).then_some(b)
    }

    /// Returns the bytes sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Returns whether piece `i` is held; `false` past the end.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.get_raw(i)
    }

    fn get_raw(&self, i: u32) -> bool {
        self.bits
            .get((i / 8) as usize)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Marks piece `i` as held; does nothing past the end.
    pub fn set(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }

    /// Marks piece `i` as not held; does nothing past the end.
    pub fn unset(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    /// Returns how many pieces are held.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// Returns the number of pieces.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Returns the pieces held here and not in `before`, in order, looking at eight a byte:
    /// a partial owner asks this of every connection at each piece it verifies.
    pub fn added_since(&self, before: &Bitfield) -> Vec<u32> {
        let mut added = Vec::new();
        for (i, (&now, &then)) in self.bits.iter().zip(&before.bits).enumerate() {
            let new = now & !then;
            if new != 0 {
                added.extend(
                    (0..8u32)
                        .filter(|b| new & (0x80 >> b) != 0)
                        .map(|b| i as u32 * 8 + b)
                        .filter(|&p| p < self.len),
                );
            }
        }
        // Past `before`'s end, everything held is new.
        let tail = before.bits.len().min(self.bits.len()) as u32 * 8;
        added.extend((tail..self.len).filter(|&p| self.get(p)));
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_round_trips_and_rejects_bad_lengths() {
        let mut b = Bitfield::empty(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), [0x80, 0x40]);
        assert_eq!(
            Bitfield::from_bytes(b.as_bytes().to_vec(), 10),
            Some(b.clone())
        );
        assert!(Bitfield::from_bytes(vec![0x80], 10).is_none());
        assert!(
            Bitfield::from_bytes(vec![0, 0x20], 10).is_none(),
            "spare bit set"
        );
        assert_eq!(Bitfield::full(10).count(), 10);
        assert!(!b.get(10));
    }

    #[test]
    fn added_since_lists_the_pieces_new_here_in_order() {
        let mut before = Bitfield::empty(20);
        [1, 8, 15].iter().for_each(|&i| before.set(i));
        let mut now = before.clone();
        [0, 9, 15, 16, 19].iter().for_each(|&i| now.set(i));
        assert_eq!(now.added_since(&before), [0, 9, 16, 19]);
        assert!(now.added_since(&now).is_empty());
        assert_eq!(
            now.added_since(&Bitfield::empty(0)).len(),
            now.count() as usize
        );
    }
}
