//! Which checkpoints a policy would save, without training or writing anything.
//!
//! Drives the [`trainer::Events`](super::events::Events) of a run through the real
//! [`Schedule`] (policy + per-batch dedup) and names each save with the real template.

use anyhow::Result;
use cairn::policy::{Ranks, Timestamp, TrainingState};
use cairn::{Schedule, Template, Vars};

use super::events::{Events, Tick, TrainerSpec, synthetic_loss};

/// A save the policy would make.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedSave {
    /// The event and timestamps of the save.
    pub tick: Tick,
    /// The formatted checkpoint name.
    pub path: String,
}

/// Inputs of a simulation besides the policy.
#[derive(Clone, Debug)]
pub struct Simulation<'a> {
    /// Shape of the run.
    pub spec: TrainerSpec,
    /// Where the run starts (a resumed run starts mid-way).
    pub start: Timestamp,
    /// Run name for the policy and the names.
    pub run_name: &'a str,
    /// Ranks for the names.
    pub ranks: Ranks,
    /// The checkpoint filename template.
    pub filename: &'a Template,
}

impl Simulation<'_> {
    /// Walk the run and collect every save `schedule` makes.
    pub fn run(&self, schedule: &mut Schedule) -> Result<Vec<PlannedSave>> {
        let mut saves = Vec::new();
        let mut metrics = vec![("loss".to_owned(), 0.0)];
        for tick in Events::resume(self.spec.clone(), self.start) {
            metrics[0].1 = synthetic_loss(tick.timestamp.batch);
            let state = TrainingState {
                timestamp: tick.timestamp,
                previous_timestamp: tick.previous,
                max_duration: self.spec.max_duration,
                dataloader_len: Some(self.spec.batches_per_epoch),
                run_name: self.run_name,
                ranks: self.ranks,
                metrics: &metrics,
            };
            if schedule.should_save(&state, tick.event)? {
                schedule.saved_at(tick.timestamp.batch);
                let vars = Vars {
                    run_name: self.run_name,
                    ranks: self.ranks,
                    timestamp: Some(&tick.timestamp),
                };
                saves.push(PlannedSave {
                    tick,
                    path: self.filename.render(&vars),
                });
            }
        }
        Ok(saves)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use cairn::policy::{Event, IntervalScheduler, MaxDuration, SavePolicy, Time};

    struct Case {
        interval: &'static str,
        bpe: u64,
        max: &'static str,
        samples: u64,
        tokens: u64,
        secs: u64,
        iteration: Option<u64>,
        start: Timestamp,
    }

    fn case(interval: &'static str, bpe: u64, max: &'static str) -> Case {
        Case {
            interval,
            bpe,
            max,
            samples: 1,
            tokens: 0,
            secs: 0,
            iteration: None,
            start: Timestamp::default(),
        }
    }

    fn spec(c: &Case) -> TrainerSpec {
        TrainerSpec {
            max_duration: MaxDuration::new(c.max.parse().unwrap()).unwrap(),
            batches_per_epoch: c.bpe,
            samples_per_batch: c.samples,
            tokens_per_batch: c.tokens,
            batch_duration: Duration::from_secs(c.secs),
            epochs_per_iteration: c.iteration,
        }
    }

    /// A save as (epoch, batch, event).
    type Save = (u64, u64, Event);

    fn saves_with(c: &Case, policy: Box<dyn SavePolicy>) -> Result<Vec<Save>> {
        let filename = Template::parse("ep{epoch}-ba{batch}.pt").unwrap();
        let sim = Simulation {
            spec: spec(c),
            start: c.start,
            run_name: "run",
            ranks: Ranks::default(),
            filename: &filename,
        };
        let mut schedule = Schedule::new(policy);
        Ok(sim
            .run(&mut schedule)?
            .into_iter()
            .map(|s| (s.tick.timestamp.epoch, s.tick.timestamp.batch, s.tick.event))
            .collect())
    }

    fn saves(c: &Case) -> Vec<Save> {
        let interval = if let Ok(n) = c.interval.parse::<i64>() {
            Time::epochs(n)
        } else {
            c.interval.parse().unwrap()
        };
        saves_with(c, Box::new(IntervalScheduler::new(interval).unwrap())).unwrap()
    }

    use Event::{Batch as B, Epoch as E, Iteration as I};

    /// Reference §4.4: every row of the simulated-trainer table.
    #[test]
    fn composer_schedule_vectors() {
        let with = |mut c: Case, f: &dyn Fn(&mut Case)| {
            f(&mut c);
            c
        };
        let rows: Vec<(Case, Vec<Save>)> = vec![
            (case("1", 4, "3ep"), vec![(1, 4, E), (2, 8, E), (3, 12, E)]),
            (
                case("1ep", 4, "3ep"),
                vec![(1, 4, E), (2, 8, E), (3, 12, E)],
            ),
            (
                case("2ep", 4, "5ep"),
                vec![(2, 8, E), (4, 16, E), (5, 20, E)],
            ),
            (case("10ep", 4, "3ep"), vec![(3, 12, E)]),
            (
                case("3ba", 4, "10ba"),
                vec![(0, 3, B), (1, 6, B), (2, 9, B), (2, 10, B)],
            ),
            (case("3ba", 4, "2ep"), vec![(0, 3, B), (1, 6, B), (2, 8, E)]),
            (case("4ba", 4, "2ep"), vec![(0, 4, B), (1, 8, B)]),
            (case("5ba", 4, "2ep"), vec![(1, 5, B), (2, 8, E)]),
            (case("100ba", 4, "2ep"), vec![(2, 8, E)]),
            (
                case("1ba", 3, "2ep"),
                vec![
                    (0, 1, B),
                    (0, 2, B),
                    (0, 3, B),
                    (1, 4, B),
                    (1, 5, B),
                    (1, 6, B),
                ],
            ),
            (
                case("1ep", 4, "10ba"),
                vec![(1, 4, E), (2, 8, E), (2, 10, B)],
            ),
            (case("1ep", 4, "6ba"), vec![(1, 4, E), (1, 6, B)]),
            (case("1ep", 4, "8ba"), vec![(1, 4, E), (1, 8, B)]),
            (case("0ep", 4, "2ep"), vec![]),
            (case("0ba", 4, "2ep"), vec![]),
            (case("-1ep", 4, "2ep"), vec![]),
            (case("0.5dur", 4, "2ep"), vec![(0, 4, B), (1, 8, B)]),
            (
                case("0.3dur", 4, "3ep"),
                vec![(0, 4, B), (1, 8, B), (2, 12, B)],
            ),
            (case("0.5dur", 4, "3ep"), vec![(1, 6, B), (2, 12, B)]),
            (case("1dur", 4, "2ep"), vec![(1, 8, B)]),
            (case("2dur", 4, "2ep"), vec![(2, 8, E)]),
            (case("0.5dur", 4, "10ba"), vec![(1, 5, B), (2, 10, B)]),
            (
                case("0.25dur", 4, "10ba"),
                vec![(0, 3, B), (1, 6, B), (2, 9, B), (2, 10, B)],
            ),
            (case("-0.5dur", 4, "8ba"), vec![(0, 4, B), (1, 8, B)]),
            (
                with(case("0.4dur", 5, "20sp"), &|c| c.samples = 2),
                vec![(0, 4, B), (1, 8, B), (1, 10, B)],
            ),
            (
                with(case("0.5dur", 5, "64tok"), &|c| c.tokens = 16),
                vec![(0, 2, B), (0, 4, B)],
            ),
            (
                with(case("0.5dur", 4, "20sec"), &|c| c.secs = 3),
                vec![(1, 7, B)],
            ),
            (
                with(case("5sp", 4, "5ba"), &|c| c.samples = 2),
                vec![(0, 3, B), (1, 5, B)],
            ),
            (
                with(case("4sp", 4, "5ba"), &|c| c.samples = 2),
                vec![(0, 2, B), (0, 4, B), (1, 5, B)],
            ),
            (
                with(case("1ep", 4, "5sp"), &|c| c.samples = 2),
                vec![(0, 3, B)],
            ),
            (
                with(case("64tok", 4, "5ba"), &|c| c.tokens = 16),
                vec![(0, 4, B), (1, 5, B)],
            ),
            (
                with(case("65tok", 4, "5ba"), &|c| c.tokens = 16),
                vec![(1, 5, B)],
            ),
            (
                with(case("2ba", 4, "7tok"), &|c| c.tokens = 2),
                vec![(0, 2, B), (0, 4, B)],
            ),
            (
                with(case("10sec", 4, "2ep"), &|c| c.secs = 3),
                vec![(0, 4, B), (1, 7, B), (2, 8, E)],
            ),
            (with(case("1h", 4, "2ep"), &|c| c.secs = 3), vec![(2, 8, E)]),
            (
                with(case("2iter", 2, "8ep"), &|c| c.iteration = Some(2)),
                vec![(4, 8, I), (8, 16, E)],
            ),
            (
                with(case("1iter", 2, "4ep"), &|c| c.iteration = Some(2)),
                vec![(2, 4, I), (4, 8, E)],
            ),
            (case("1iter", 2, "4ep"), vec![(4, 8, E)]),
            (
                with(case("3ba", 4, "3ep"), &|c| {
                    c.start = Timestamp {
                        epoch: 1,
                        batch: 4,
                        sample: 4,
                        ..Timestamp::default()
                    }
                }),
                vec![(1, 6, B), (2, 9, B), (2, 12, B)],
            ),
            (
                with(case("3ba", 4, "3ep"), &|c| {
                    c.start = Timestamp {
                        epoch: 1,
                        batch: 6,
                        batch_in_epoch: 2,
                        sample: 6,
                        sample_in_epoch: 2,
                        ..Timestamp::default()
                    }
                }),
                vec![(2, 9, B), (2, 12, B)],
            ),
            (
                with(case("1ep", 4, "2ep"), &|c| {
                    c.start = Timestamp {
                        epoch: 2,
                        batch: 8,
                        sample: 8,
                        ..Timestamp::default()
                    }
                }),
                vec![],
            ),
        ];
        for (c, want) in rows {
            assert_eq!(
                saves(&c),
                want,
                "interval {} bpe {} max {}",
                c.interval,
                c.bpe,
                c.max
            );
        }
    }

    /// Composer's own `test_checkpoint_intervals`: 5 batches per epoch, 2 samples per batch.
    #[test]
    fn composer_checkpoint_intervals_test() {
        let rows: &[(&str, &str, Option<u64>, usize)] = &[
            ("1", "5ep", None, 5),
            ("2iter", "8ep", Some(2), 2),
            ("2ep", "8ep", None, 4),
            ("10ba", "8ep", None, 4),
            ("0.25dur", "4ep", None, 4),
            ("1ep", "4ep", None, 4),
            ("5ba", "4ep", None, 4),
            ("5ba", "10ba", None, 2),
            ("0.35dur", "4ep", None, 3),
            ("0.01dur", "100ba", None, 100),
            ("0.10dur", "70sp", None, 10),
            ("0.05dur", "80sp", None, 20),
        ];
        for (interval, max, iteration, n) in rows {
            let mut c = case(interval, 5, max);
            c.samples = 2;
            c.iteration = *iteration;
            assert_eq!(saves(&c).len(), *n, "{interval} over {max}");
        }
    }

    /// Composer's token and sample interval tests: multiples crossed, plus the final save.
    #[test]
    fn composer_token_and_sample_interval_tests() {
        for (interval, n) in [
            ("1tok", 5),
            ("64tok", 2),
            ("65tok", 1),
            ("1sp", 5),
            ("4sp", 3),
            ("5sp", 2),
        ] {
            let mut c = case(interval, 4, "5ba");
            c.samples = 2;
            c.tokens = 16;
            assert_eq!(saves(&c).len(), n, "{interval}");
        }
    }

    struct Callable(fn(&TrainingState<'_>, Event) -> bool);
    impl SavePolicy for Callable {
        fn should_save(
            &mut self,
            s: &TrainingState<'_>,
            e: Event,
        ) -> Result<bool, cairn::policy::PolicyError> {
            Ok((self.0)(s, e))
        }
        fn describe(&self) -> String {
            "callable".into()
        }
    }

    /// Callables get no automatic final save, and a policy that always says yes still saves
    /// once per batch.
    #[test]
    fn callables_and_the_per_batch_dedup() {
        let c = case("callable", 4, "2ep");
        let every3 = Callable(|s, e| e == Event::Batch && s.timestamp.batch % 3 == 0);
        assert_eq!(
            saves_with(&c, Box::new(every3)).unwrap(),
            vec![(0, 3, B), (1, 6, B)]
        );
        let always = saves_with(&c, Box::new(Callable(|_, _| true))).unwrap();
        assert_eq!(always.len(), 8);
        assert!(always.iter().all(|s| s.2 == B));
    }

    #[test]
    fn zero_fraction_is_refused_up_front() {
        assert!(IntervalScheduler::new(Time::Fraction(0.0)).is_err());
    }
}
