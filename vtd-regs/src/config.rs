//! The configuration of an emulated unit and the CAP/ECAP it implies.
//!
//! [`VtdConfig::from_qemu_props`] accepts QEMU's `-device intel-iommu,<props>` property string
//! and yields the same guest-visible identity (CAP/ECAP) as QEMU 10.0.2's
//! `vtd_cap_init()` in QEMU hw/i386/intel_iommu.c, with the defaults of its `vtd_properties`:
//! a VMM user who knows QEMU's knobs gets the unit they expect. Fields beyond QEMU's set (5-level,
//! nesting, more fault records, wider PASIDs) are plain struct fields.

use alloc::string::{String, ToString};

use crate::cap::{Cap, Ecap};

/// Why a configuration or property string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A property QEMU's intel-iommu does not have.
    #[error("unknown intel-iommu property `{0}`")]
    UnknownProperty(String),
    /// A property value that does not parse.
    #[error("invalid value `{value}` for property `{property}`: expected {expected}")]
    InvalidValue {
        /// The property.
        property: String,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The same property given twice with different values.
    #[error("property `{0}` given twice with different values")]
    Repeated(String),
    /// Settings that cannot hold together (the message says which and why).
    #[error("contradictory configuration: {0}")]
    Contradiction(&'static str),
}

/// Everything that shapes a unit's guest-visible identity and behaviour.
///
/// `VtdConfig::default()` is QEMU 10.0.2's default intel-iommu on a split-irqchip q35 machine:
/// legacy mode, 48-bit, interrupt remapping on, EIM off, one fault record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtdConfig {
    /// Guest address width in bits: 39, 48 or 57 (QEMU `aw-bits`; 57 is beyond QEMU).
    pub aw_bits: u8,
    /// Scalable-mode translation (ECAP.SMTS; QEMU `x-scalable-mode`).
    pub scalable_mode: bool,
    /// First-stage translation in scalable mode (ECAP.FLTS; QEMU `x-flts`).
    pub first_stage: bool,
    /// Second-stage translation in scalable mode (ECAP.SLTS). QEMU offers it with scalable
    /// mode unless `x-flts` is on; legacy mode always translates with second-stage tables.
    pub second_stage: bool,
    /// Nested translation (ECAP.NEST): first stage over second stage; needs both.
    pub nesting: bool,
    /// Pass-through translation type (ECAP.PT; QEMU `pt`).
    pub pass_through: bool,
    /// PASID support and width: 0 = none, else ECAP.PASID with PSS = bits - 1
    /// (QEMU `x-pasid-mode` sets ECAP.PASID with PSS = 0, i.e. 1 bit).
    pub pasid_bits: u8,
    /// Caching mode (CAP.CM; QEMU `caching-mode`).
    pub caching_mode: bool,
    /// Snoop control (ECAP.SC; QEMU `snoop-control`).
    pub snoop_control: bool,
    /// Device-TLB / ATS support (ECAP.DT; QEMU `device-iotlb`).
    pub device_iotlb: bool,
    /// Interrupt remapping (ECAP.IR; QEMU `intremap`).
    pub interrupt_remapping: bool,
    /// Extended interrupt mode (ECAP.EIM; QEMU `eim`).
    pub eim: bool,
    /// First-stage 1 GiB pages (CAP.FL1GP; QEMU `fs1gp`, default on, effective with x-flts).
    pub fs1gp: bool,
    /// Read and write draining (CAP.DRD/DWD; QEMU `dma-drain`).
    pub dma_drain: bool,
    /// DMA translation offered at all (CAP.SAGAW non-zero; QEMU `dma-translation`).
    pub dma_translation: bool,
    /// Supervisor requests in first stage (ECAP.SRS): QEMU sets it with scalable second stage.
    pub supervisor_requests: bool,
    /// Enhanced SRTP (CAP.ESRTPS): SRTP also invalidates all translation caches.
    pub esrtps: bool,
    /// Enhanced SIRTP (CAP.ESIRTPS): SIRTP also invalidates the interrupt entry cache.
    pub esirtps: bool,
    /// Number of fault-recording registers (CAP.NFR + 1), 1..=222 so they fit the 4 KiB window.
    pub fault_records: u16,
    /// QEMU `stale-tm`: accepted for compatibility; it does not change the identity.
    pub stale_tm: bool,
    /// Page requests (ECAP.PRS): the page request queue, its event and page group responses.
    /// Needs scalable mode and device-TLB support (spec 11.4.3: a unit reporting PRS reports
    /// DT). Property `x-vtd-page-requests`, vtd's own: QEMU implements page requests
    /// (hw/i386/intel_iommu.c `vtd_pri_request_page`) but its intel-iommu has no property that
    /// sets ECAP.PRS. Off by default, so every QEMU identity stays as QEMU reports it.
    pub page_requests: bool,
}

impl Default for VtdConfig {
    fn default() -> Self {
        Self {
            aw_bits: 48,
            scalable_mode: false,
            first_stage: false,
            second_stage: true,
            nesting: false,
            pass_through: true,
            pasid_bits: 0,
            caching_mode: false,
            snoop_control: false,
            device_iotlb: false,
            // QEMU's `intremap=auto` resolves to on with a split irqchip, the platform vtd
            // targets; QEMU 10.0.2's default ECAP (the first row of the identity test below) has
            // ECAP.IR.
            interrupt_remapping: true,
            // `eim=auto` resolves to off under TCG, where the identity test's rows were read;
            // the eim=on row differs.
            eim: false,
            fs1gp: true,
            dma_drain: true,
            dma_translation: true,
            supervisor_requests: false,
            esrtps: false,
            esirtps: false,
            fault_records: 1,
            stale_tm: false,
            page_requests: false,
        }
    }
}

/// Fault-recording registers start at 0x220 (QEMU's CAP.FRO = 34); 222 of them fill the page.
const MAX_FAULT_RECORDS: u16 = ((crate::regs::MMIO_SIZE - FRCD_OFFSET) / 16) as u16;
const FRCD_OFFSET: u64 = 0x220;
/// IVA at 0xf0 (QEMU's ECAP.IRO = 15).
const IVA_OFFSET: u64 = 0xf0;

impl VtdConfig {
    /// Parses QEMU's `-device intel-iommu,<props>` property list (`key=value,...`; a bare key
    /// means `on`; `""` is the default unit) and applies QEMU 10.0.2's validation
    /// (hw/i386/intel_iommu.c `vtd_decide_config`).
    ///
    /// ```
    /// use vtd_regs::VtdConfig;
    /// let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    /// assert_eq!(cfg.cap().into_bits(), 0x01d2008c222f0606);
    /// assert_eq!(cfg.ecap().into_bits(), 0x0000880000f00f4a);
    /// assert!(VtdConfig::from_qemu_props("x-flts=on").is_err()); // needs scalable mode
    /// ```
    pub fn from_qemu_props(props: &str) -> Result<Self, ConfigError> {
        let mut cfg = VtdConfig::default();
        let mut seen: alloc::vec::Vec<(&str, &str)> = alloc::vec::Vec::new();
        let mut scalable_set = None;
        let mut intremap = None;
        let mut eim = None;
        for item in props.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (item, "on"),
            };
            if let Some((_, prev)) = seen.iter().find(|(k, _)| *k == key) {
                if *prev != value {
                    return Err(ConfigError::Repeated(key.to_string()));
                }
                continue;
            }
            seen.push((key, value));
            match key {
                "aw-bits" => {
                    cfg.aw_bits = value.parse().map_err(|_| invalid(key, value, "39 or 48"))?;
                }
                "caching-mode" => cfg.caching_mode = parse_bool(key, value)?,
                "x-scalable-mode" => scalable_set = Some(parse_bool(key, value)?),
                "x-flts" => cfg.first_stage = parse_bool(key, value)?,
                "x-pasid-mode" => {
                    cfg.pasid_bits = if parse_bool(key, value)? { 1 } else { 0 };
                }
                "fs1gp" => cfg.fs1gp = parse_bool(key, value)?,
                "snoop-control" => cfg.snoop_control = parse_bool(key, value)?,
                "dma-drain" => cfg.dma_drain = parse_bool(key, value)?,
                "dma-translation" => cfg.dma_translation = parse_bool(key, value)?,
                "stale-tm" => cfg.stale_tm = parse_bool(key, value)?,
                "device-iotlb" => cfg.device_iotlb = parse_bool(key, value)?,
                "pt" => cfg.pass_through = parse_bool(key, value)?,
                "intremap" => intremap = parse_on_off_auto(key, value)?,
                "eim" => eim = parse_on_off_auto(key, value)?,
                // Not a QEMU property (see `VtdConfig::page_requests`): the `x-vtd-` prefix
                // says so, and every other unknown name is still refused.
                "x-vtd-page-requests" => cfg.page_requests = parse_bool(key, value)?,
                _ => return Err(ConfigError::UnknownProperty(key.to_string())),
            }
        }
        cfg.scalable_mode = scalable_set.unwrap_or(false);
        // QEMU: scalable mode offers second stage (SLTS) and supervisor requests (SRS) unless
        // x-flts selects first stage instead (vtd_cap_init).
        cfg.second_stage = !cfg.first_stage;
        cfg.supervisor_requests = cfg.scalable_mode && !cfg.first_stage;
        // `auto` resolves as on a split-irqchip machine for intremap and as under TCG for eim.
        cfg.interrupt_remapping = intremap.unwrap_or(true);
        cfg.eim = eim.unwrap_or(false);
        if cfg.eim && !cfg.interrupt_remapping {
            return Err(ConfigError::Contradiction(
                "eim=on cannot be selected without intremap=on",
            ));
        }
        if cfg.first_stage && !cfg.scalable_mode {
            return Err(ConfigError::Contradiction(
                "x-flts is only available in scalable mode",
            ));
        }
        if cfg.pasid_bits > 0 && !cfg.scalable_mode {
            return Err(ConfigError::Contradiction(
                "x-pasid-mode needs x-scalable-mode=on",
            ));
        }
        if cfg.first_stage && cfg.aw_bits != 48 {
            return Err(ConfigError::Contradiction(
                "with x-flts=on the only supported aw-bits is 48",
            ));
        }
        if cfg.aw_bits != 39 && cfg.aw_bits != 48 {
            return Err(invalid("aw-bits", &cfg.aw_bits.to_string(), "39 or 48"));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the settings can hold together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.aw_bits, 39 | 48 | 57) {
            return Err(ConfigError::Contradiction("aw_bits must be 39, 48 or 57"));
        }
        if self.first_stage && !self.scalable_mode {
            return Err(ConfigError::Contradiction(
                "first-stage translation needs scalable mode",
            ));
        }
        if self.nesting && !(self.scalable_mode && self.first_stage && self.second_stage) {
            return Err(ConfigError::Contradiction(
                "nesting needs scalable mode with first- and second-stage translation",
            ));
        }
        if self.pasid_bits > 20 {
            return Err(ConfigError::Contradiction("PASIDs are at most 20 bits"));
        }
        if self.pasid_bits > 0 && !self.scalable_mode {
            return Err(ConfigError::Contradiction("PASIDs need scalable mode"));
        }
        if self.eim && !self.interrupt_remapping {
            return Err(ConfigError::Contradiction("EIM needs interrupt remapping"));
        }
        if self.page_requests && !(self.scalable_mode && self.device_iotlb) {
            // Page requests come from devices with ATS and PRI, whose context entries only
            // scalable mode has a PRE bit for; ECAP.PRS implies ECAP.DT (spec 11.4.3).
            return Err(ConfigError::Contradiction(
                "page requests need scalable mode and device-iotlb",
            ));
        }
        if self.fault_records == 0 || self.fault_records > MAX_FAULT_RECORDS {
            return Err(ConfigError::Contradiction(
                "fault_records must be 1..=222 to fit the 4 KiB register window",
            ));
        }
        if self.aw_bits == 57 && self.dma_translation && !self.second_stage && !self.first_stage {
            return Err(ConfigError::Contradiction(
                "57-bit width needs a translation stage",
            ));
        }
        Ok(())
    }

    /// CAP_REG for this configuration (QEMU's vtd_cap_init for the properties it shares).
    pub fn cap(&self) -> Cap {
        let mut sagaw = 0;
        if self.dma_translation && (self.second_stage || !self.scalable_mode) {
            // SAGAW lists the second-stage depths up to the configured width (spec 11.4.2).
            sagaw |= 0b010;
            if self.aw_bits >= 48 {
                sagaw |= 0b100;
            }
            if self.aw_bits >= 57 {
                sagaw |= 0b1000;
            }
        } else if self.dma_translation {
            // QEMU advertises SAGAW even with first stage only (the row x-flts=on shows 39|48).
            sagaw = if self.aw_bits >= 48 { 0b110 } else { 0b010 };
            if self.aw_bits >= 57 {
                sagaw |= 0b1000;
            }
        }
        Cap::new()
            .with_nd(6)
            .with_cm(self.caching_mode)
            .with_sagaw(sagaw)
            .with_mgaw(self.aw_bits - 1)
            .with_fro((FRCD_OFFSET / 16) as u16)
            .with_sllps(0b11)
            .with_psi(true)
            .with_nfr((self.fault_records - 1) as u8)
            .with_mamv(18)
            .with_dwd(self.dma_drain)
            .with_drd(self.dma_drain)
            .with_fl1gp(self.first_stage && self.fs1gp)
            .with_fl5lp(self.first_stage && self.aw_bits >= 57)
            .with_esrtps(self.esrtps)
            .with_esirtps(self.esirtps)
    }

    /// ECAP_REG for this configuration.
    pub fn ecap(&self) -> Ecap {
        Ecap::new()
            .with_qi(true)
            .with_dt(self.device_iotlb)
            .with_ir(self.interrupt_remapping)
            .with_eim(self.eim)
            .with_pt(self.pass_through)
            .with_sc(self.snoop_control)
            .with_prs(self.page_requests)
            .with_iro((IVA_OFFSET / 16) as u16)
            .with_mhmv(if self.interrupt_remapping { 0xf } else { 0 })
            .with_nest(self.nesting)
            .with_srs(self.supervisor_requests)
            .with_pasid(self.pasid_bits > 0)
            .with_pss(self.pasid_bits.saturating_sub(1))
            .with_smts(self.scalable_mode)
            .with_slts(self.scalable_mode && self.second_stage)
            .with_flts(self.scalable_mode && self.first_stage)
    }

    /// Number of second-stage levels for an AW field value of a context or PASID entry, if the
    /// unit supports it (AW 1 = 3-level, 2 = 4-level, 3 = 5-level; spec 9.3, SAGAW).
    pub fn second_stage_levels(&self, aw: u8) -> Option<u8> {
        let levels = aw.checked_add(2)?;
        self.cap()
            .supports_second_stage_levels(levels)
            .then_some(levels)
    }
}

fn invalid(property: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        property: property.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// QEMU's boolean property syntax (qapi/qobject-input-visitor: on/off, yes/no, true/false).
fn parse_bool(property: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(invalid(property, value, "on or off")),
    }
}

/// QEMU's OnOffAuto: `None` for auto.
fn parse_on_off_auto(property: &str, value: &str) -> Result<Option<bool>, ConfigError> {
    match value {
        "auto" => Ok(None),
        other => parse_bool(property, other)
            .map(Some)
            .map_err(|_| invalid(property, value, "on, off or auto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP and ECAP read off QEMU 10.0.2 with `xp` on 0xfed90000 (the unit's MMIO base on q35),
    /// one row per `-device intel-iommu,<props>` string.
    const QEMU_ROWS: [(&str, u64, u64); 10] = [
        ("", 0x00d2008c222f0606, 0x0000000000f00f4a),
        ("eim=on", 0x00d2008c222f0606, 0x0000000000f00f5a),
        ("x-scalable-mode=on", 0x00d2008c222f0606, 0x0000480080f00f4a),
        (
            "x-scalable-mode=on,x-flts=on",
            0x01d2008c222f0606,
            0x0000880000f00f4a,
        ),
        (
            "x-scalable-mode=on,x-pasid-mode=on",
            0x00d2008c222f0606,
            0x0000490080f00f4a,
        ),
        ("aw-bits=39", 0x00d2008c22260206, 0x0000000000f00f4a),
        ("caching-mode=on", 0x00d2008c222f0686, 0x0000000000f00f4a),
        (
            "x-scalable-mode=on,x-flts=on,fs1gp=off,pt=off",
            0x00d2008c222f0606,
            0x0000880000f00f0a,
        ),
        ("device-iotlb=on", 0x00d2008c222f0606, 0x0000000000f00f4e),
        (
            "snoop-control=on,x-scalable-mode=on",
            0x00d2008c222f0606,
            0x0000480080f00fca,
        ),
    ];

    #[test]
    fn identity_matches_qemu_for_every_row() {
        for (props, cap, ecap) in QEMU_ROWS {
            let cfg = VtdConfig::from_qemu_props(props).unwrap();
            assert_eq!(cfg.cap().into_bits(), cap, "CAP for `{props}`");
            assert_eq!(cfg.ecap().into_bits(), ecap, "ECAP for `{props}`");
        }
    }

    #[test]
    fn alternative_spellings_mean_the_same_unit() {
        let a = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
        let b = VtdConfig::from_qemu_props(" x-scalable-mode , x-flts=yes,intremap=auto ").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            VtdConfig::from_qemu_props("").unwrap(),
            VtdConfig::default()
        );
    }

    #[test]
    fn unknown_and_contradictory_properties_are_errors() {
        use ConfigError::*;
        assert_eq!(
            VtdConfig::from_qemu_props("x-flts-typo=on"),
            Err(UnknownProperty("x-flts-typo".into()))
        );
        assert!(matches!(
            VtdConfig::from_qemu_props("x-flts=on"),
            Err(Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("aw-bits=57"),
            Err(InvalidValue { .. })
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("aw-bits=abc"),
            Err(InvalidValue { .. })
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on,aw-bits=39"),
            Err(Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("eim=on,intremap=off"),
            Err(Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("x-pasid-mode=on"),
            Err(Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("pt=maybe"),
            Err(InvalidValue { .. })
        ));
        assert_eq!(
            VtdConfig::from_qemu_props("pt=on,pt=off"),
            Err(Repeated("pt".into()))
        );
        assert!(VtdConfig::from_qemu_props("pt=on,pt=on").is_ok());
    }

    #[test]
    fn page_requests_are_a_vtd_property() {
        let cfg =
            VtdConfig::from_qemu_props("x-scalable-mode=on,device-iotlb=on,x-vtd-page-requests=on")
                .unwrap();
        assert!(cfg.page_requests && cfg.ecap().prs());
        // Only ECAP.PRS (bit 29) differs from the same unit without page requests.
        let without = VtdConfig::from_qemu_props("x-scalable-mode=on,device-iotlb=on").unwrap();
        assert_eq!(cfg.ecap().into_bits() ^ without.ecap().into_bits(), 1 << 29);
        assert_eq!(cfg.cap(), without.cap());
        assert!(matches!(
            VtdConfig::from_qemu_props("x-vtd-page-requests=on"),
            Err(ConfigError::Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("x-scalable-mode=on,x-vtd-page-requests=on"),
            Err(ConfigError::Contradiction(_))
        ));
        assert!(matches!(
            VtdConfig::from_qemu_props("x-vtd-page-requests=maybe"),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(!VtdConfig::default().ecap().prs());
    }

    #[test]
    fn beyond_qemu_settings() {
        let cfg = VtdConfig {
            aw_bits: 57,
            scalable_mode: true,
            first_stage: true,
            second_stage: true,
            nesting: true,
            pasid_bits: 20,
            fault_records: 8,
            ..VtdConfig::default()
        };
        cfg.validate().unwrap();
        let (cap, ecap) = (cfg.cap(), cfg.ecap());
        assert!(cap.fl5lp() && cap.supports_second_stage_levels(5));
        assert_eq!(cap.fault_record_count(), 8);
        assert_eq!(cap.max_guest_address_width(), 57);
        assert!(ecap.nest() && ecap.flts() && ecap.slts());
        assert_eq!(ecap.pasid_bits(), 20);
        assert_eq!(cfg.second_stage_levels(3), Some(5));
        let bad = VtdConfig {
            fault_records: 0,
            ..VtdConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = VtdConfig {
            fault_records: 223,
            ..VtdConfig::default()
        };
        assert!(bad.validate().is_err());
        let ok = VtdConfig {
            fault_records: 222,
            ..VtdConfig::default()
        };
        ok.validate().unwrap();
    }
}
