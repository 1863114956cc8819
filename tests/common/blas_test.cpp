// Guards the 10x performance trap: LibTorch must compute with MKL or OpenBLAS (the PyPI wheel's
// MKL is linked into libtorch_cpu), never with the reference BLAS.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

namespace {

TEST(Blas, LibTorchUsesAFastBlas) {
  const auto a = at::ones({64, 64}, at::kFloat);
  const auto c = at::mm(a, a);  // forces the BLAS library to be mapped and used
  EXPECT_EQ(c[0][0].item<float>(), 64.0f);
  const std::string config = at::show_config();
  const bool mkl = config.find("BLAS_INFO=mkl") != std::string::npos;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool openblas = false;
  std::string blas_lines;
  while (std::getline(maps, line)) {
    if (line.find("blas") != std::string::npos || line.find("lapack") != std::string::npos) {
      blas_lines += line + "\n";
      if (line.find("openblas") != std::string::npos) openblas = true;
    }
  }
  EXPECT_TRUE(mkl || openblas) << "neither MKL (LibTorch's config) nor OpenBLAS (mapped):\n"
                               << config << blas_lines;
  EXPECT_EQ(blas_lines.find("/blas/libblas.so"), std::string::npos) << "reference BLAS is mapped:\n"
                                                                    << blas_lines;
}

}  // namespace
