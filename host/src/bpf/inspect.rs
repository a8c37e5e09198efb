//! `kpulse plugins inspect`: BPF objects embedded in a plugin file and the attach points
//! (program sections) they ask for, found without loading anything.

/// A BPF ELF object found inside a plugin file, for `kpulse plugins inspect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbeddedObject {
    /// Byte offset of the ELF image in the plugin file.
    pub offset: usize,
    pub size: usize,
    /// Program sections, i.e. the attach points the object asks for
    /// (`tracepoint/skb/kfree_skb`, `tp_btf/sched_switch`, `kprobe/...`).
    pub programs: Vec<String>,
    /// Number of ELF sections in the object.
    pub sections: usize,
}

/// Finds 64-bit little-endian ELF images for `EM_BPF` embedded in `bytes` (a plugin embeds
/// its objects with `include_bytes!`) and lists their program sections.
pub fn embedded_objects(bytes: &[u8]) -> Vec<EmbeddedObject> {
    const EM_BPF: u16 = 247;
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
    };
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(pos) = bytes[start..].windows(4).position(|w| w == b"\x7fELF") {
        let offset = start + pos;
        start = offset + 4;
        let elf = &bytes[offset..];
        if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) || u16_at(elf, 18) != Some(EM_BPF) {
            continue;
        }
        let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) = (
            u64_at(elf, 0x28).and_then(|v| usize::try_from(v).ok()),
            u16_at(elf, 0x3a).map(usize::from),
            u16_at(elf, 0x3c).map(usize::from),
            u16_at(elf, 0x3e).map(usize::from),
        ) else {
            continue;
        };
        let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
        let section = |i: usize| -> Option<(u32, u32, usize, usize)> {
            let at = header(i)?;
            Some((
                u32_at(elf, at)?,
                u32_at(elf, at + 4)?,
                usize::try_from(u64_at(elf, at + 0x18)?).ok()?,
                usize::try_from(u64_at(elf, at + 0x20)?).ok()?,
            ))
        };
        let Some((_, _, strtab_offset, strtab_size)) = section(shstrndx) else {
            continue;
        };
        let Some(strtab) = elf.get(strtab_offset..strtab_offset.saturating_add(strtab_size)) else {
            continue;
        };
        let mut programs = Vec::new();
        for i in 0..shnum {
            let Some((name, kind, _, size)) = section(i) else {
                break;
            };
            let name = strtab
                .get(name as usize..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            // SHT_PROGBITS sections with code and a `kind/target` name are programs.
            if kind == 1 && size > 0 && name.contains('/') && !name.starts_with('.') {
                programs.push(name);
            }
        }
        found.push(EmbeddedObject {
            offset,
            size: shoff + shnum * shentsize,
            programs,
            sections: shnum,
        });
    }
    found
}
