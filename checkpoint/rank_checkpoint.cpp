// Rank-file I/O of the sharded checkpoint: JobState tensors + exact scalars into one safetensors
// file (atomic write), and the validated, bitwise read back.
#include "checkpoint/rank_checkpoint.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "common/json_integer.h"
#include "data/checksum.h"
#include "model/safetensors.h"

namespace cskv::checkpoint {

namespace fs = std::filesystem;
using trainer::JobState;
using trainer::KvKind;

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08" PRId64, step);
  return buf;
}

std::string step_dir(const std::string& ckpt_dir, int64_t step) {
  return ckpt_dir + "/" + step_dir_name(step);
}

std::string rank_file_path(const std::string& ckpt_dir, int64_t step, int rank) {
  return step_dir(ckpt_dir, step) + "/" + rank_file_name(rank);
}

RankFileEntry describe_rank_file(const std::string& ckpt_dir, int64_t step, int rank) {
  const std::string path = rank_file_path(ckpt_dir, step, rank);
  std::error_code ec;
  const uint64_t bytes = fs::file_size(path, ec);
  CSKV_CHECK_INPUT(!ec, path << ": cannot read the rank file: " << ec.message());
  return {rank, rank_file_name(rank), bytes, data::format_checksum(data::xxh64_file(path))};
}

namespace {

std::string tensor_name(const trainer::LayerJob& job, const char* what) {
  return "jobs/" + std::to_string(job.layer) + "/" + trainer::kv_kind_name(job.kind) + "/" + what;
}

constexpr const char* kMomentNames[] = {"m_A", "v_A", "m_B", "v_B"};

// The evaluation scalars of a job as (metadata key, field); stored like floor and last_loss.
template <typename State>
auto eval_fields(State& s) {
  using D = decltype(&s.seconds);
  return std::vector<std::pair<const char*, D>>{
      {"train_error_init", &s.train_error_init}, {"holdout_error_init_q", &s.holdout_error_init_q},
      {"train_error", &s.train_error},           {"holdout_error_q", &s.holdout_error_q},
      {"holdout_error", &s.holdout_error},       {"seconds", &s.seconds}};
}

std::string double_text(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string double_bits(double v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, bits);
  return buf;
}

void check_float_2d(const at::Tensor& t, const std::string& job, const char* what,
                    const std::string& path) {
  CSKV_CHECK_INPUT(t.defined(), path << ": " << job << ": " << what << " is undefined");
  CSKV_CHECK_INPUT(t.scalar_type() == at::kFloat && t.dim() == 2,
                   path << ": " << job << ": " << what << " must be a 2-D float32 tensor, found "
                        << t.scalar_type() << " " << t.sizes());
}

// A field of a job object in the metadata; input error naming the file and the job index.
const nlohmann::json& job_field(const nlohmann::json& j, const char* key, const std::string& path,
                                size_t index) {
  CSKV_CHECK_INPUT(j.is_object() && j.contains(key),
                   path << ": job entry " << index << " has no '" << key << "'");
  return j.at(key);
}

int64_t job_int(const nlohmann::json& j, const char* key, const std::string& path, size_t index) {
  const auto& v = job_field(j, key, path, index);
  CSKV_CHECK_INPUT(json_integer_fits<int64_t>(v) && v.get<int64_t>() >= 0,
                   path << ": job entry " << index << " field '" << key
                        << "' must be a non-negative integer, found " << v.dump());
  return v.get<int64_t>();
}

double job_double(const nlohmann::json& j, const std::string& key, const std::string& path,
                  size_t index) {
  const std::string bits_key = key + "_bits";
  const auto& v = job_field(j, bits_key.c_str(), path, index);
  CSKV_CHECK_INPUT(
      v.is_string() && v.get<std::string>().size() == 16 &&
          v.get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos,
      path << ": job entry " << index << " field '" << bits_key
           << "' must be 16 lower-case hex digits, found " << v.dump());
  const uint64_t bits = std::stoull(v.get<std::string>(), nullptr, 16);
  double d = 0;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

at::Tensor read_tensor(const model::SafetensorsFile& f, const std::string& name,
                       const std::vector<int64_t>& shape, const std::string& path,
                       const std::string& job) {
  CSKV_CHECK_INPUT(f.contains(name), path << ": " << job << ": missing tensor '" << name << "'");
  const auto& e = f.entry(name);
  CSKV_CHECK_INPUT(e.dtype == model::StDType::kF32 && e.shape == shape,
                   path << ": " << job << ": tensor '" << name << "' is "
                        << model::dtype_name(e.dtype) << " " << at::IntArrayRef(e.shape)
                        << ", expected F32 " << at::IntArrayRef(shape));
  return f.get(name).clone();
}

// waterfill: a job's kept channels and codes as one float32 [r, 4] tensor of rows
// (channel, bits, offset, scale) — every value exact in float32.
at::Tensor codes_tensor(const trainer::LayerJob& job, const std::string& path) {
  const auto r = static_cast<int64_t>(job.codes.size());
  CSKV_CHECK_INPUT(job.rank == r && static_cast<int64_t>(job.channels.size()) == r,
                   path << ": " << job.name() << " has rank " << job.rank << ", "
                        << job.channels.size() << " kept channels and " << r << " codes");
  at::Tensor t = at::empty({r, 4}, at::kFloat);
  for (int64_t i = 0; i < r; ++i) {
    const auto& c = job.codes[static_cast<size_t>(i)];
    t[i][0] = static_cast<float>(job.channels[static_cast<size_t>(i)]);
    t[i][1] = static_cast<float>(c.bits);
    t[i][2] = c.offset;
    t[i][3] = c.scale;
  }
  return t;
}

void read_codes(const at::Tensor& t, trainer::LayerJob& job, const std::string& path) {
  const auto a = t.accessor<float, 2>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    const float channel = a[i][0], bits = a[i][1];
    CSKV_CHECK_INPUT(channel >= 0 && channel < (1 << 24) && channel == std::floor(channel) &&
                         (i == 0 || channel > a[i - 1][0]) && bits >= 1 && bits <= 8 &&
                         bits == std::floor(bits) && std::isfinite(a[i][2]) &&
                         std::isfinite(a[i][3]) && a[i][3] > 0,
                     path << ": " << job.name() << ": code " << i << " (channel " << channel
                          << ", bits " << bits << ", offset " << a[i][2] << ", scale " << a[i][3]
                          << ") is not a kept channel's code");
    job.channels.push_back(static_cast<int64_t>(channel));
    job.codes.push_back({static_cast<int>(bits), a[i][2], a[i][3]});
  }
}

}  // namespace

RankFileEntry write_rank_checkpoint(const std::string& ckpt_dir, int64_t step, int rank,
                                    const std::vector<JobState>& jobs,
                                    const std::string& resolved_config_json) {
  CSKV_CHECK_INPUT(step >= 0, ckpt_dir << ": checkpoint step must be >= 0, found " << step);
  CSKV_CHECK_INPUT(rank >= 0, ckpt_dir << ": rank must be >= 0, found " << rank);
  const std::string path = rank_file_path(ckpt_dir, step, rank);
  model::NamedTensors tensors;
  nlohmann::ordered_json job_list = nlohmann::ordered_json::array();
  for (const JobState& s : jobs) {
    const std::string job = s.job.name();
    check_float_2d(s.A, job, "A", path);
    check_float_2d(s.B, job, "B", path);
    const int64_t H = s.A.size(0), r = s.A.size(1), D = s.B.size(1);
    CSKV_CHECK_INPUT(r == s.job.rank && s.B.size(0) == r,
                     path << ": " << job << " has rank " << s.job.rank << " but A is "
                          << s.A.sizes() << " and B is " << s.B.sizes());
    const at::Tensor* moments[] = {&s.m_A, &s.v_A, &s.m_B, &s.v_B};
    // A job trained on a GPU is saved from there: device -> host copies are bit for bit.
    tensors.emplace_back(tensor_name(s.job, "A"), s.A.to(at::kCPU).contiguous());
    tensors.emplace_back(tensor_name(s.job, "B"), s.B.to(at::kCPU).contiguous());
    for (int i = 0; i < 4; ++i) {
      check_float_2d(*moments[i], job, kMomentNames[i], path);
      const at::Tensor& like = i < 2 ? s.A : s.B;
      CSKV_CHECK_INPUT(moments[i]->sizes() == like.sizes(),
                       path << ": " << job << ": " << kMomentNames[i] << " is "
                            << moments[i]->sizes() << ", expected " << like.sizes());
      tensors.emplace_back(tensor_name(s.job, kMomentNames[i]),
                           moments[i]->to(at::kCPU).contiguous());
    }
    const bool has_eigenvalues = s.eigenvalues.defined();
    if (has_eigenvalues) {
      CSKV_CHECK_INPUT(s.eigenvalues.scalar_type() == at::kDouble && s.eigenvalues.dim() == 1 &&
                           s.eigenvalues.size(0) == D,
                       path << ": " << job << ": eigenvalues must be float64 [" << D << "], found "
                            << s.eigenvalues.scalar_type() << " " << s.eigenvalues.sizes());
      const at::Tensor src = s.eigenvalues.contiguous();
      at::Tensor raw = at::empty({D, 2}, at::TensorOptions().dtype(at::kFloat));
      std::memcpy(raw.data_ptr(), src.data_ptr(), static_cast<size_t>(D) * sizeof(double));
      tensors.emplace_back(tensor_name(s.job, "eigenvalues_f64"), raw);
    }
    const bool has_codes = !s.job.codes.empty();
    if (has_codes) tensors.emplace_back(tensor_name(s.job, "codes"), codes_tensor(s.job, path));
    nlohmann::ordered_json j;
    j["layer"] = s.job.layer;
    j["kind"] = trainer::kv_kind_name(s.job.kind);
    j["rank"] = s.job.rank;
    j["hidden"] = H;
    j["kv_dim"] = D;
    j["step"] = s.step;
    j["total_steps"] = s.total_steps;
    j["data_position"] = s.data_position;
    j["floor"] = double_text(s.floor);
    j["floor_bits"] = double_bits(s.floor);
    j["last_loss"] = double_text(s.last_loss);
    j["last_loss_bits"] = double_bits(s.last_loss);
    for (const auto& [key, value] : eval_fields(s)) {
      j[key] = double_text(*value);
      j[std::string(key) + "_bits"] = double_bits(*value);
    }
    j["has_eigenvalues"] = has_eigenvalues;
    if (has_codes) j["has_codes"] = true;
    job_list.push_back(j);
  }
  const model::Metadata metadata = {{"format", kRankFileFormat},
                                    {"step", std::to_string(step)},
                                    {"rank", std::to_string(rank)},
                                    {"config", resolved_config_json},
                                    {"jobs", job_list.dump()}};
  const std::string dir = step_dir(ckpt_dir, step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  CSKV_CHECK(!ec, dir << ": cannot create the checkpoint directory: " << ec.message());
  files::fsync_directory(ckpt_dir);  // the step directory's entry survives a crash
  model::write_safetensors(path, tensors, metadata);
  return describe_rank_file(ckpt_dir, step, rank);
}

namespace {
const std::string& metadata_field(const model::SafetensorsFile& f, const std::string& key) {
  const auto& meta = f.header().metadata;
  const auto it = meta.find(key);
  CSKV_CHECK_INPUT(it != meta.end(),
                   f.path() << ": not a cskv rank checkpoint (no '" << key << "' in __metadata__)");
  return it->second;
}

std::shared_ptr<model::SafetensorsFile> open_rank_file(const std::string& path) {
  auto f = model::SafetensorsFile::open(path);
  const std::string& format = metadata_field(*f, "format");
  CSKV_CHECK_INPUT(format == kRankFileFormat, path << ": format is '" << format
                                                   << "', this build reads '" << kRankFileFormat
                                                   << "'");
  return f;
}
}  // namespace

std::string read_rank_checkpoint_config(const std::string& path) {
  return metadata_field(*open_rank_file(path), "config");
}

std::vector<JobState> read_rank_checkpoint(const std::string& path) {
  const auto f = open_rank_file(path);
  const nlohmann::json list =
      nlohmann::json::parse(metadata_field(*f, "jobs"), nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(list.is_array(), path << ": __metadata__ 'jobs' is not a JSON array");
  std::vector<JobState> out;
  size_t index = 0;
  for (const auto& j : list) {
    JobState s;
    s.job.layer = job_int(j, "layer", path, index);
    const auto& kind = job_field(j, "kind", path, index);
    CSKV_CHECK_INPUT(kind == "K" || kind == "V", path << ": job entry " << index
                                                      << " kind must be \"K\" or \"V\", found "
                                                      << kind.dump());
    s.job.kind = kind == "K" ? KvKind::kKey : KvKind::kValue;
    s.job.rank = job_int(j, "rank", path, index);
    const int64_t H = job_int(j, "hidden", path, index);
    const int64_t D = job_int(j, "kv_dim", path, index);
    s.step = job_int(j, "step", path, index);
    s.total_steps = job_int(j, "total_steps", path, index);
    s.data_position = job_int(j, "data_position", path, index);
    s.floor = job_double(j, "floor", path, index);
    s.last_loss = job_double(j, "last_loss", path, index);
    for (const auto& [key, field] : eval_fields(s)) *field = job_double(j, key, path, index);
    const auto& has_eig = job_field(j, "has_eigenvalues", path, index);
    CSKV_CHECK_INPUT(has_eig.is_boolean(), path << ": job entry " << index
                                                << " field 'has_eigenvalues' must be a boolean");
    const std::string job = s.job.name();
    const int64_t r = s.job.rank;
    s.A = read_tensor(*f, tensor_name(s.job, "A"), {H, r}, path, job);
    s.B = read_tensor(*f, tensor_name(s.job, "B"), {r, D}, path, job);
    s.m_A = read_tensor(*f, tensor_name(s.job, "m_A"), {H, r}, path, job);
    s.v_A = read_tensor(*f, tensor_name(s.job, "v_A"), {H, r}, path, job);
    s.m_B = read_tensor(*f, tensor_name(s.job, "m_B"), {r, D}, path, job);
    s.v_B = read_tensor(*f, tensor_name(s.job, "v_B"), {r, D}, path, job);
    if (has_eig.get<bool>()) {
      const at::Tensor raw =
          read_tensor(*f, tensor_name(s.job, "eigenvalues_f64"), {D, 2}, path, job);
      s.eigenvalues = at::empty({D}, at::TensorOptions().dtype(at::kDouble));
      std::memcpy(s.eigenvalues.data_ptr(), raw.data_ptr(),
                  static_cast<size_t>(D) * sizeof(double));
    }
    if (j.contains("has_codes")) {
      CSKV_CHECK_INPUT(j["has_codes"] == true,
                       path << ": job entry " << index << " field 'has_codes' must be true");
      read_codes(read_tensor(*f, tensor_name(s.job, "codes"), {r, 4}, path, job), s.job, path);
    }
    out.push_back(std::move(s));
    ++index;
  }
  return out;
}

}  // namespace cskv::checkpoint
